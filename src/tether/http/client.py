"""`Client`: outbound HTTP that spends the caller's budget, never more. Built on aiohttp.

Every call:
- gets `timeout = min(explicit timeout, ambient remaining - margin)` as its total timeout
  (connect, send, answer and body; enforced by a `CallTimer` around the call);
- fails fast with `DeadlineExceeded`, sending nothing, when less than the margin + 1 ms is left;
- sends `X-Request-Timeout` (that same timeout, in ms), `X-Request-ID` and, when tracing is
  active, `traceparent`;
- records per-phase timings (`Response.timings`, and a debug log line on `tether.http.client`).

Errors are mapped at this edge: running out of the ambient budget is `DeadlineExceeded`; running
out of an explicit per-call timeout is `UpstreamTimeout`; a refused, reset or broken connection,
an answer that is not well-formed HTTP (a bad status line, bad chunk sizes, headers over
aiohttp's limits, conflicting lengths), too many redirects and a redirect to a URL that cannot
be followed are `UpstreamUnavailable`. HTTP error statuses are answers, not exceptions: see
`Response.raise_for_status()`, which `raise_for_status=True` (per call, or on a session of the
caller's own) applies to every answer once its body is read. A `raise_for_status` callable is
the caller's own check: aiohttp runs it, and what it raises reaches the caller unchanged.

A redirect is followed within the same call: the same timeout covers all of it, and each
request sends what is left of it as `X-Request-Timeout` (with a session of the caller's own,
whose request class is not tether's, every request of the call sends the first one's).

Bytes that arrive on a connection waiting in the pool answer no request: the connection is
closed rather than handing them to the next call as its answer (`_Unsolicited`).

The body is read whole before the call returns (the timeout covers it), and at most `max_body`
bytes of it (64 MiB unless set; after decompression): a larger answer is `AnswerTooLarge` (an
`UpstreamUnavailable`), found from its `Content-Length` before anything is read or else once
the limit is passed, and its connection is closed. For larger bodies, or to stream them, use
aiohttp directly with `tether.wire.call_timeout()` and `outgoing_headers()`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json as jsonlib
import logging
import time
from collections.abc import Coroutine, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from tether._settings import margin_seconds, positive_seconds
from tether.deadline import CallTimer
from tether.errors import (
    DeadlineExceeded,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    format_seconds,
    one_line,
)
from tether.http.timings import CallTimings
from tether.request_id import REQUEST_ID_HEADER, current_request_id
from tether.tracing import outgoing_trace_headers
from tether.wire import DEFAULT_MARGIN, REQUEST_TIMEOUT, budget_milliseconds, call_timeout

log = logging.getLogger("tether.http.client")

__all__ = ["AnswerTooLarge", "CallTimings", "Client", "HTTPStatusError", "Response"]

# The default `max_body`: the most of an answer's body a call reads into memory.
DEFAULT_MAX_BODY = 64 * 1024 * 1024


@dataclass(slots=True)
class Response:
    """A complete answer: status, headers, the whole body, and how long each phase took."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str
    timings: CallTimings

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def text(self, errors: str = "strict") -> str:
        """The body decoded with the charset its `Content-Type` names (UTF-8 when it names
        none, or one Python does not know)."""
        return self.body.decode(_charset(self.headers.get("Content-Type", "")), errors)

    def raise_for_status(self) -> None:
        """Raise for an error answer: 504 is `UpstreamTimeout` (the upstream's own time ran
        out), 502/503 are `UpstreamUnavailable`, any other 4xx/5xx is `HTTPStatusError`."""
        if self.status < 400:
            return
        if self.status == 504:
            raise UpstreamTimeout(f"{self.url} answered 504: its own time ran out")
        if self.status in (502, 503):
            raise UpstreamUnavailable(f"{self.url} answered {self.status}")
        raise HTTPStatusError(self)


class AnswerTooLarge(UpstreamUnavailable):
    """An answer whose body is larger than the client's `max_body`: not read any further, and
    its connection closed."""


class HTTPStatusError(UpstreamError):
    """An error answer (4xx, or 5xx other than 502/503/504) from `raise_for_status()`."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"{response.url} answered {response.status}")
        self.response = response


class Client:
    """An aiohttp session that passes the ambient budget on. Use as `async with Client() as c`.

    `timeout` is the default explicit per-call timeout (None: only the budget bounds calls).
    `margin` is kept back from the remaining budget at each call (see docs/concepts.md).
    `base_url` (an absolute http or https URL) is put in front of paths starting with `/`.
    `limit` caps the pool's open connections (0: no cap, as in aiohttp).
    `max_body` caps the bytes of an answer's body read into memory (None: no cap); a larger
    answer is `AnswerTooLarge`.
    Pass `session=` to use an aiohttp session of your own (its lifetime stays yours).
    Bad settings raise `ValueError` here, not at the first call.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        timeout: float | None = None,
        margin: float = DEFAULT_MARGIN,
        session: aiohttp.ClientSession | None = None,
        limit: int = 100,
        max_body: int | None = DEFAULT_MAX_BODY,
    ) -> None:
        if timeout is not None:
            timeout = positive_seconds("timeout", timeout)
        margin = margin_seconds(margin)
        if base_url is not None and not _absolute_http(base_url):
            raise ValueError(f"base_url must be an absolute http or https URL, got {base_url!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a whole number of connections >= 0, got {limit!r}")
        if max_body is not None and (
            isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1
        ):
            raise ValueError(
                f"max_body must be a whole number of bytes >= 1 or None, got {max_body!r}"
            )
        self._base_url = base_url.rstrip("/") if base_url else ""
        self._timeout = timeout
        self._margin = margin
        self._owns_session = session is None
        self._session = session
        self._limit = limit
        self._max_body = max_body
        # The loop the session runs on: known from the first call on (a session is bound to
        # one loop); read per call without asking asyncio, which costs a getpid() on 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
            self._loop = None

    def _session_for_call(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=_TimedConnector(limit=self._limit),
                request_class=_TimedRequest,
            )
        return self._session

    def _loop_of_session(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.get_running_loop()
        return loop

    async def request(
        self,
        method: str,
        url: str,
        *,
        # An explicit cap for this one call (the "caller's explicit timeout"); it can only
        # shorten the ambient budget, never extend it.
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Response:
        """Send one request within the budget; the keyword arguments go to aiohttp."""
        explicit = self._timeout if timeout is None else positive_seconds("timeout", timeout)
        # aiohttp raises its own error for an error status, before the body is read; tether's
        # check runs on the whole answer instead (a callable check stays aiohttp's to run).
        session = self._session_for_call()
        check_status = kwargs.pop("raise_for_status", None)
        if check_status is None and not self._owns_session:
            check_status = session.raise_for_status
        if check_status is not None:
            kwargs["raise_for_status"] = check_status if callable(check_status) else False
        limit = call_timeout(explicit, margin=self._margin)  # raises when nothing is left
        budget_bound = limit is not None and (explicit is None or limit < explicit)
        if limit is None:
            seconds = timeout_header = None
        else:
            # Whole milliseconds: what the header says is what the call waits.
            milliseconds = budget_milliseconds(limit)
            seconds = milliseconds / 1000
            timeout_header = str(milliseconds)
        request_id = current_request_id()
        passed_on = outgoing_trace_headers()
        if request_id is not None:
            passed_on.append((REQUEST_ID_HEADER, request_id))
        timings = CallTimings(_start=time.perf_counter())
        call = _Call(timings, seconds, timeout_header, passed_on)
        extra: Mapping[str, str] | None = headers
        if not self._owns_session:  # the caller's session: its request class adds nothing
            extra = CIMultiDict(headers or ())
            call.add_headers_to(extra)
        full_url = self._base_url + url if self._base_url and url.startswith("/") else url
        token = _current_call.set(call)
        try:
            # The call's total timeout is tether's call timer around all of it (connect, send,
            # answer, body), not aiohttp's per-call timer: the same cancellation at the same
            # instant, for one entry in the loop's shared deadline heap instead of a loop timer
            # and a ClientTimeout per call (timed in place: ~4.7 us per call for aiohttp's,
            # ~3.3 us for tether's). Inside, the ambient deadline stays the caller's.
            timer: AbstractContextManager[object]
            if seconds is None:
                timer = _NO_TIMER
            else:
                loop = self._loop or self._loop_of_session()
                timer = CallTimer(loop, seconds)
            with timer:
                async with session.request(
                    method, full_url, headers=extra, timeout=_NO_TIMEOUT, **kwargs
                ) as answer:
                    timings.first_byte = time.perf_counter() - timings._start
                    length = answer.content_length
                    if self._max_body is None or (
                        length is not None
                        and length <= self._max_body
                        and "Content-Encoding" not in answer.headers
                    ):
                        body = await answer.read()
                    else:
                        body = await _read_at_most(answer, length, self._max_body, method, full_url)
                    timings.body_done = time.perf_counter() - timings._start
                    response = Response(answer.status, answer.headers, body, full_url, timings)
        except TimeoutError as exc:
            raise _timeout_error(full_url, limit, budget_bound) from exc
        # Before the caller's URL: aiohttp's errors for a bad redirect are URL errors too.
        except aiohttp.RedirectClientError as exc:
            location = one_line(str(getattr(exc, "url", exc)))
            raise UpstreamUnavailable(
                f"{method} {full_url} failed: redirected to {location!r}, which cannot be followed"
            ) from exc
        except aiohttp.TooManyRedirects as exc:
            raise UpstreamUnavailable(
                f"{method} {full_url} failed: still redirected after {len(exc.history)} redirects"
            ) from exc
        # A URL aiohttp cannot send to is the caller's mistake, found before anything is sent.
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            hint = " (a path needs the client's base_url)" if url.startswith("/") else ""
            raise ValueError(
                f"{method} {full_url!r}: not an absolute http or https URL{hint}"
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamUnavailable(f"{method} {full_url} failed: {one_line(str(exc))}") from exc
        except aiohttp.ClientPayloadError as exc:  # a body cut short, or not in its encoding
            raise UpstreamUnavailable(
                f"{method} {full_url} failed: a malformed answer body: {_reason(exc)}"
            ) from exc
        except aiohttp.ClientHttpProxyError as exc:
            raise UpstreamUnavailable(
                f"{method} {full_url} failed: the proxy answered {exc.status}"
            ) from exc
        except aiohttp.ClientResponseError as exc:
            if not isinstance(exc.__cause__, HttpProcessingError):
                raise  # a `raise_for_status` callable's: the caller's own check
            raise UpstreamUnavailable(  # an answer aiohttp could not parse
                f"{method} {full_url} failed: a malformed answer: {one_line(str(exc.message))}"
            ) from exc
        finally:
            _current_call.reset(token)
        log.debug("%s %s -> %s %s", method, full_url, response.status, timings)
        if check_status is True:
            response.raise_for_status()
        return response

    # Plain functions handing back `request()`'s coroutine: one coroutine per call, not two.

    def get(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Response]:
        return self.request("DELETE", url, **kwargs)


# aiohttp's own timeouts are off for every call: tether's call timer bounds the call.
_NO_TIMEOUT = aiohttp.ClientTimeout()
# A call without a timeout (no budget, no explicit timeout).
_NO_TIMER = contextlib.nullcontext()


async def _read_at_most(
    answer: aiohttp.ClientResponse, length: int | None, max_body: int, method: str, url: str
) -> bytes:
    """The answer's body, decompressed, read piece by piece while it is at most `max_body`
    bytes; past that (or when `Content-Length` says so before anything is read),
    `AnswerTooLarge`, and the answer's connection is closed. (The answers to HEAD, and 204 and
    304 answers, have no body whatever their `Content-Length` says.) `length`: the answer's
    `Content-Length`, as the caller read it."""
    size = 0
    pieces = []
    if (
        length is None
        or length <= max_body
        or "Content-Encoding" in answer.headers
        or answer.method == "HEAD"
        or answer.status in (204, 304)
    ):
        async for piece in answer.content.iter_any():
            size += len(piece)
            if size > max_body:
                break
            pieces.append(piece)
        else:
            return b"".join(pieces)
    answer.close()
    said = f" (Content-Length: {length})" if length is not None and size <= max_body else ""
    raise AnswerTooLarge(
        f"{method} {url}: the answer's body is larger than max_body, {max_body} bytes{said}"
    )


def _absolute_http(url: str) -> bool:
    """Whether `url` is an absolute http or https URL with a host."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def _charset(content_type: str) -> str:
    """The charset a `Content-Type` value names, if Python knows it; else UTF-8."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            try:
                return codecs.lookup(value.strip().strip('"')).name
            except LookupError:
                break
    return "utf-8"


def _reason(exc: aiohttp.ClientPayloadError) -> str:
    """What was wrong with an answer's body, on one line: the parser's own words where it
    gave them (not its '400, message=' wrapping, which reads as an HTTP status)."""
    cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else None
    if cause is None and exc.args and isinstance(exc.args[-1], HttpProcessingError):
        cause = exc.args[-1]
    return one_line(cause.message if cause is not None else str(exc))


def _timeout_error(url: str, limit: float | None, budget_bound: bool) -> Exception:
    waited = format_seconds(limit or 0.0)
    if budget_bound:
        return DeadlineExceeded(
            f"deadline exceeded: no answer from {url} within the {waited} left of the budget"
        )
    return UpstreamTimeout(f"no answer from {url} within its {waited} timeout")


class _Call:
    """The call the running task is making, as the request and connector classes below need it.

    Rules: tether's headers are added to the request aiohttp builds (`add_headers_to`), not
    handed to aiohttp as a dict of extra headers, which it would convert and merge first (about
    9,000 CPU instructions per call). `X-Request-Timeout` replaces any the caller set: the
    budget is not the caller's to extend. `X-Request-ID` and `traceparent` are added only when
    the caller set none (header names compare case-insensitively). A call's later requests (a
    redirect followed, aiohttp's resend on a pooled connection that was closed) send what is
    left of the call's timeout, never the first request's figure.
    """

    __slots__ = ("built", "passed_on", "seconds", "timeout_header", "timings")

    def __init__(
        self,
        timings: CallTimings,
        seconds: float | None,
        timeout_header: str | None,
        passed_on: list[tuple[str, str]],
    ) -> None:
        self.timings = timings
        self.seconds = seconds  # the call's timeout, from `timings._start` on
        self.timeout_header = timeout_header
        self.passed_on = passed_on
        self.built = False

    def add_headers_to(self, headers: CIMultiDict[str]) -> None:
        if self.timeout_header is not None:
            if self.built and self.seconds is not None:
                spent = time.perf_counter() - self.timings._start
                self.timeout_header = str(budget_milliseconds(self.seconds - spent))
            headers[REQUEST_TIMEOUT] = self.timeout_header
        self.built = True
        for name, value in self.passed_on:
            headers.setdefault(name, value)


# Read by the classes below, which aiohttp calls within the calling task (or tasks it starts
# from it).
_current_call: ContextVar[_Call | None] = ContextVar("tether.http.call", default=None)


def _mark(phase: str) -> None:
    call = _current_call.get()
    if call is not None:
        call.timings.mark(phase)


class _Unsolicited:
    """The parser of a connection waiting in the pool: any bytes it is fed answer no request.

    Rule: a connection in the pool answers no request, so bytes arriving on it (an upstream
    that sent a second answer, or a body after a 304, 204 or HEAD answer, the rest arriving
    after the first answer was read) are out of step with the requests. aiohttp alone parses
    them and hands them to the next call on that connection as its answer. Here they close the
    connection instead (a warning says so), and the next call gets a new one. aiohttp gives
    each request a parser of its own (`set_response_params`, before the request is written),
    which replaces this one: a pooled connection costs one object and nothing per read. An
    answer that arrives after the next request has been sent cannot be told from a real one
    in HTTP/1.1.
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: ResponseHandler) -> None:
        self._protocol = protocol

    def feed_data(self, data: bytes) -> tuple[list[Any], bool, bytes]:
        if not data:  # aiohttp resuming its reading: nothing arrived
            return [], False, b""
        protocol = self._protocol
        transport = protocol.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        log.warning(
            "%d bytes from %s answer no request (the connection was idle); closing it",
            len(data),
            peer,
        )
        protocol.close()
        return [], False, b""

    def feed_eof(self) -> None:  # the connection closed while idle: nothing was under way
        return None


class _TimedConnector(aiohttp.TCPConnector):
    """Notes when name resolution and connecting (TLS included) end (only new connections
    pass there, so pooled calls pay nothing); guards the connections it keeps in its pool
    against bytes that answer no request (`_Unsolicited`)."""

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
        resolved = await super()._resolve_host(host, port, traces)
        _mark("dns")
        return resolved

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        protocol = await super()._create_connection(req, traces, timeout)
        _mark("connect")
        return protocol

    def _release(self, key: Any, protocol: Any, *, should_close: bool = False) -> None:
        super()._release(key, protocol, should_close=should_close)
        if protocol.is_connected():  # kept in the pool
            protocol._parser = _Unsolicited(protocol)


class _TimedRequest(aiohttp.ClientRequest):
    """Adds tether's headers (see `_Call`) and notes when the request has been sent."""

    def update_headers(self, headers: Any) -> None:
        super().update_headers(headers)
        call = _current_call.get()
        if call is not None:
            call.add_headers_to(self.headers)

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        response = await super().send(conn)
        call = _current_call.get()  # once per call: written out, not through _mark
        if call is not None:
            call.timings.request_sent = time.perf_counter() - call.timings._start
        return response
