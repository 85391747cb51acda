"""The data plane: client connections (asyncio.Protocol + httptools) and each request's trip.

A request, in order:
1. Parsed by httptools. Headers over `max_header_bytes`: 431. Headers not complete within
   `header_timeout` (slowloris, or nothing at all): the connection is closed. Malformed or
   ambiguous framing (both Content-Length and Transfer-Encoding, differing Content-Lengths, bad
   chunk sizes, obsolete line folding): 400 and the connection is closed.
2. The budget starts at the request's first byte: `X-Request-Timeout`/`grpc-timeout` count from
   then, clamped to `deadline.max`, or `deadline.default`. Invalid: 400. Already spent: 504.
3. Calling conventions, then routing (see conventions.py and routing.py): problems if broken.
4. One upstream attempt (retries come with the upstream policy): connect within
   min(zone connect, remaining), first response byte within min(zone read, remaining - margin);
   `X-Request-Timeout` = remaining - margin. Refused: 503; reset or broken: 502; per-attempt
   timeout: 504 upstream-timeout; the deadline: 504 deadline-exceeded. In every failure the
   upstream connection is closed, never pooled.
5. The answer streams back. Upstream errors (>= 400) that are not problem+json become problems
   with the same status (`detail` from a JSON `message` or `error` field); problem+json passes.
6. One JSON access log line on stdout.

A client that disconnects cancels its request's task: the upstream connection is closed at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, cast

import httptools

from tether.deadline import Deadline, deadline_at
from tether.errors import DeadlineExceeded, InvalidDeadlineHeader
from tether.gateway.config import Config, Endpoint, Service
from tether.gateway.conventions import REQUEST_ID_FORM, Caller, check
from tether.gateway.routing import Route, route
from tether.gateway.upstream import (
    EndpointPool,
    Feed,
    UpstreamConnection,
    UpstreamError,
    no_delay,
)
from tether.problems import (
    BAD_GATEWAY,
    BAD_REQUEST,
    DEADLINE_EXCEEDED,
    EXPIRED_ON_ARRIVAL,
    HEADERS_TOO_LARGE,
    INTERNAL_ERROR,
    INVALID_DEADLINE_HEADER,
    MEDIA_TYPE,
    PAYLOAD_TOO_LARGE,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    Problem,
)
from tether.wire import deadline_from_headers

log = logging.getLogger("tether.gateway")

# Headers that belong to one connection, never forwarded (RFC 9110 7.6.1), plus the deadline
# headers and identity headers the gateway sets itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    }
)
_REPLACED = frozenset(
    {
        b"x-request-timeout",
        b"x-request-deadline",
        b"grpc-timeout",
        b"host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"content-length",
    }
)
_ERROR_BODY_LIMIT = 64 * 1024
LOG_FLUSH_SECONDS = 0.1  # access log lines are written in batches at most this old


class Gateway:
    """What every connection of one gateway process shares."""

    def __init__(self, config: Config, *, access_log: Any = None) -> None:
        self.config = config
        self.pools: dict[tuple[str, int], EndpointPool] = {}
        self.connections: set[ClientConnection] = set()
        self.in_flight = 0
        self.idle = asyncio.Event()  # set whenever no request is in flight
        self.idle.set()
        self.draining = False
        self._access_log = access_log if access_log is not None else sys.stdout
        self._log_lines: list[str] = []
        self._log_timer: asyncio.TimerHandle | None = None
        self._next: dict[str, int] = {}

    def pool(self, endpoint: Endpoint) -> EndpointPool:
        key = (endpoint.address.host, endpoint.address.port)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = EndpointPool(*key)
        return pool

    def endpoint(self, service: Service) -> Endpoint:
        """The next endpoint of `service`, preferring the gateway's own zone."""
        local = [e for e in service.endpoints if e.zone == self.config.zone] or list(
            service.endpoints
        )
        turn = self._next.get(service.name, 0)
        self._next[service.name] = turn + 1
        return local[turn % len(local)]

    def write_access_log(self, entry: dict[str, Any]) -> None:
        """Queue one access log line; lines go out together every `LOG_FLUSH_SECONDS`."""
        self._log_lines.append(json.dumps(entry, separators=(",", ":")))
        if self._log_timer is None:
            self._log_timer = asyncio.get_running_loop().call_later(
                LOG_FLUSH_SECONDS, self.flush_access_log
            )

    def flush_access_log(self) -> None:
        self._log_timer = None
        if self._log_lines:
            self._access_log.write("\n".join(self._log_lines) + "\n")
            self._access_log.flush()
            self._log_lines.clear()


class _TooLarge(Exception):
    pass


class Request:
    """One request as parsed: method, target, headers, body feed, and its timeline."""

    __slots__ = (
        "body",
        "first_byte",
        "has_body",
        "headers",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(self, first_byte: float) -> None:
        self.first_byte = first_byte
        self.method = b""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: Feed | None = None
        self.has_body = False
        self.keep_alive = False  # the client's wish, read when its headers were complete


class ClientConnection(asyncio.Protocol):
    """One client's keep-alive connection; requests are handled one after another."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.limits = gateway.config.limits
        self.transport: asyncio.Transport | None = None
        self.peer = "-"
        self._parser = httptools.HttpRequestParser(self)
        self._request: Request | None = None
        self._header_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._backlog: list[bytes] = []
        self._answering = False  # bytes of the current request's answer have been written
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        no_delay(self.transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "-"
        self.gateway.connections.add(self)
        self._arm(self.limits.header_timeout)  # a connection that sends nothing is closed too

    def data_received(self, data: bytes) -> None:
        if self._task is not None and self._request is None:
            self._backlog.append(data)  # a pipelined request: parsed once this one is done
            assert self.transport is not None
            self.transport.pause_reading()
            return
        try:
            self._parser.feed_data(data)
        except _TooLarge:
            self._refuse(
                HEADERS_TOO_LARGE.problem(
                    f"the request's headers are larger than {self.limits.max_header_bytes} bytes"
                )
            )
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _TooLarge):
                self._refuse(
                    HEADERS_TOO_LARGE.problem(
                        f"the request's headers are larger than {self.limits.max_header_bytes} "
                        "bytes"
                    )
                )
            else:
                raise
        except httptools.HttpParserError as exc:
            self._refuse(BAD_REQUEST.problem(f"malformed HTTP request: {_reason(exc)}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._can_write.set()
        self._disarm()
        self.gateway.connections.discard(self)
        if self._request is not None and self._request.body is not None:
            self._request.body.end(ConnectionResetError("the client went away"))
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client left: abandon the upstream call now

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = Request(time.monotonic())
        self._answering = False
        self._header_bytes = 0
        self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        assert self._request is not None
        self._request.target += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._request is not None
        self._request.headers.append((name.lower(), value))
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        request = self._request
        assert request is not None
        assert self.transport is not None
        self._disarm()
        request.method = self._parser.get_method()
        request.keep_alive = bool(self._parser.should_keep_alive())  # forgotten after the body
        request.version = self._parser.get_http_version()
        request.has_body = any(
            (n == b"content-length" and v.strip() != b"0") or n == b"transfer-encoding"
            for n, v in request.headers
        )
        if request.has_body:
            request.body = Feed(self.transport.pause_reading, self.transport.resume_reading)
            self._arm(self.limits.body_timeout)
        self._task = asyncio.get_running_loop().create_task(self._serve(request))

    def on_body(self, body: bytes) -> None:
        if self._request is not None and self._request.body is not None:
            self._request.body.put(body)
            self._arm(self.limits.body_timeout)  # a stall is measured between chunks

    def on_message_complete(self) -> None:
        if self._request is not None and self._request.body is not None:
            self._request.body.end()
        if self._request is not None and self._request.has_body:
            self._disarm()
        self._request = None

    # -- limits -------------------------------------------------------------------------

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise _TooLarge

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        """Headers or a body that did not arrive in time, or an idle keep-alive: close."""
        self._timer = None
        if self.transport is not None:
            self.transport.close()

    # -- answering ----------------------------------------------------------------------

    def _refuse(self, problem: Problem) -> None:
        """Answer a request that cannot be parsed or allowed, then close the connection."""
        self._disarm()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if not self._answering and self.transport is not None and not self.closed:
            self.transport.write(_problem_bytes(problem, None, close=True))
        if self.transport is not None:
            self.transport.close()

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError("the client went away")
        self._answering = True
        self.transport.write(data)
        if not self._can_write.is_set():
            await self._can_write.wait()

    def finished(self, keep_alive: bool) -> None:
        """The current exchange is over: wait for the next request, or close."""
        self._task = None
        if self.closed or self.transport is None:
            return
        if not keep_alive or self.gateway.draining:
            self.transport.close()
            return
        self._arm(self.limits.idle_timeout)
        if self._backlog:
            data, self._backlog = b"".join(self._backlog), []
            self.transport.resume_reading()
            self.data_received(data)

    async def _serve(self, request: Request) -> None:
        gateway = self.gateway
        gateway.in_flight += 1
        gateway.idle.clear()
        exchange = Exchange(self, request)
        try:
            keep_alive = await exchange.run()
        except asyncio.CancelledError:
            keep_alive = False
            exchange.outcome = exchange.outcome or "client_gone"
            if self.closed:
                return  # the client left; nothing to answer (the log line is written below)
            raise
        except Exception:
            log.exception("request %s: unexpected failure", exchange.request_id)
            keep_alive = False
            if not exchange.response_started and not self.closed:
                await exchange.answer_problem(
                    INTERNAL_ERROR.problem("the gateway failed"), keep_alive=False
                )
        finally:
            gateway.in_flight -= 1
            if not gateway.in_flight:
                gateway.idle.set()
            exchange.log()
        self.finished(keep_alive and request.keep_alive)


class Exchange:
    """One request's trip through the gateway and back."""

    def __init__(self, connection: ClientConnection, request: Request) -> None:
        self.connection = connection
        self.request = request
        self.headers = _multi(request.headers)  # indexed once: every step reads it
        self.config = connection.gateway.config
        self.request_id: str | None = None
        self.caller: Caller | None = None
        self.route: Route | None = None
        self.status = 0
        self.outcome = ""
        self.budget: float | None = None
        self.deadline: Deadline | None = None
        self.upstream_address = "-"
        self.upstream_time = 0.0
        self.response_started = False

    async def run(self) -> bool:
        """Serve the request; True when the client connection may be kept alive."""
        request = self.request
        headers = self.headers
        given = _first(headers, b"x-request-id")
        if given is not None and REQUEST_ID_FORM.fullmatch(given):  # echoed even on early refusals
            self.request_id = given.decode("ascii")
        deadline = self._deadline()
        if isinstance(deadline, Problem):
            return await self.answer_problem(deadline)
        caller = check(
            headers,
            has_body=request.has_body,
            rules=self.config.conventions,
            authenticated=self.config.auth is not None,
        )
        if isinstance(caller, Problem):
            return await self.answer_problem(caller)
        self.caller, self.request_id = caller, caller.request_id
        found = route(
            request.target, self.config.services, version_header=b"api-version" in headers
        )
        if isinstance(found, Problem):
            return await self.answer_problem(found)
        self.route = found
        length = _first(headers, b"content-length")
        if (
            length is not None
            and length.isdigit()
            and int(length) > self.config.limits.max_body_bytes
        ):
            return await self.answer_problem(
                PAYLOAD_TOO_LARGE.problem(
                    f"the body is larger than {self.config.limits.max_body_bytes} bytes"
                ),
                keep_alive=False,
            )
        if deadline.expired:
            return await self.answer_problem(
                EXPIRED_ON_ARRIVAL.problem(
                    "the request's deadline had passed when it arrived; nothing was done"
                )
            )
        self.deadline = deadline
        try:
            async with deadline_at(deadline):
                return await self.forward(found, caller)
        except DeadlineExceeded:
            self.outcome = "deadline_exceeded"
            if self.response_started:
                return False
            return await self.answer_problem(
                DEADLINE_EXCEEDED.problem(
                    f"the request's budget of {self.budget * 1000 if self.budget else 0:.0f} ms "
                    "ran out before the upstream answered"
                )
            )

    def _deadline(self) -> Deadline | Problem:
        """The budget from the first byte: the earliest deadline header, clamped, or default."""
        first_byte = self.request.first_byte
        try:
            asked = deadline_from_headers(self.request.headers, received_at=first_byte)
        except InvalidDeadlineHeader as exc:
            return INVALID_DEADLINE_HEADER.problem(str(exc), header=exc.header)
        settings = self.config.deadline
        when = (
            first_byte + settings.default
            if asked is None
            else min(asked.when, first_byte + settings.max)
        )
        self.budget = max(when - first_byte, 0.0)
        return Deadline(when)

    async def forward(self, found: Route, caller: Caller) -> bool:
        endpoint = self.connection.gateway.endpoint(found.service)
        policy = (
            self.config.same_zone if endpoint.zone == self.config.zone else self.config.cross_zone
        )
        pool = self.connection.gateway.pool(endpoint)
        self.upstream_address = str(endpoint.address)
        deadline = self.deadline
        assert deadline is not None
        margin = self.config.deadline.margin
        left = deadline.remaining() - margin
        if left < 0.001:
            raise DeadlineExceeded("no budget left for an upstream attempt")
        started = time.monotonic()
        try:
            upstream = await pool.acquire(min(policy.connect, deadline.remaining()))
        except TimeoutError:
            self.outcome = "connect_timeout"
            return await self.answer_problem(
                UPSTREAM_TIMEOUT.problem(
                    f"could not connect to the upstream within {policy.connect * 1000:.0f} ms"
                )
            )
        except UpstreamError as exc:
            self.outcome = exc.kind
            return await self.answer_problem(
                UPSTREAM_UNAVAILABLE.problem("the upstream service refused the connection")
            )
        pool.in_flight += 1
        try:
            return await self._exchange(upstream, found, caller, policy.read, margin, started)
        finally:
            pool.in_flight -= 1
            self.upstream_time = time.monotonic() - started
            pool.release(upstream)

    async def _exchange(
        self,
        upstream: UpstreamConnection,
        found: Route,
        caller: Caller,
        read: float,
        margin: float,
        started: float,
    ) -> bool:
        deadline = self.deadline
        assert deadline is not None
        head_future = upstream.start()
        left = deadline.remaining() - margin
        if left < 0.001:
            raise DeadlineExceeded("no budget left for an upstream attempt")
        try:
            await upstream.write(self._upstream_head(found, caller, left, upstream))
            await self._send_body(upstream)
            async with asyncio.timeout(min(read, left)):
                status, headers = await head_future
        except TimeoutError:
            upstream.close()
            if left < read:  # the budget, not the zone's read timeout, is what ran out
                self.outcome = "deadline_exceeded"
                return await self.answer_problem(
                    DEADLINE_EXCEEDED.problem(
                        f"the request's budget of {(self.budget or 0) * 1000:.0f} ms ran out "
                        "before the upstream answered"
                    )
                )
            self.outcome = "upstream_timeout"
            return await self.answer_problem(
                UPSTREAM_TIMEOUT.problem(
                    f"the upstream did not answer within its {read * 1000:.0f} ms read timeout"
                )
            )
        except UpstreamError as exc:
            upstream.close()
            self.outcome = exc.kind
            kind = UPSTREAM_UNAVAILABLE if exc.kind == "refused" else BAD_GATEWAY
            return await self.answer_problem(kind.problem(str(exc)))
        except _BodyTooLarge:
            upstream.close()
            self.outcome = "body_too_large"
            return await self.answer_problem(
                PAYLOAD_TOO_LARGE.problem(
                    f"the body is larger than {self.config.limits.max_body_bytes} bytes"
                ),
                keep_alive=False,
            )
        except BaseException:
            upstream.close()  # the deadline, or the client left: the upstream must stop too
            raise
        self.outcome = "ok"
        try:
            return await self._relay(upstream, status, headers, started)
        except BaseException:
            upstream.close()
            raise

    def _upstream_head(
        self, found: Route, caller: Caller, left: float, upstream: UpstreamConnection
    ) -> bytes:
        request = self.request
        headers = [
            (n, v)
            for n, v in request.headers
            if n not in _HOP_BY_HOP
            and n not in _REPLACED
            and not (self.config.auth and n == b"x-user-id")
        ]
        connection_tokens = {
            t.strip().lower()
            for n, v in request.headers
            if n == b"connection"
            for t in v.split(b",")
        }
        headers = [(n, v) for n, v in headers if n not in connection_tokens]
        host = _first(self.headers, b"host")
        forwarded_for = [v for n, v in request.headers if n == b"x-forwarded-for"]
        chain = b", ".join([*forwarded_for, self.connection.peer.encode()])
        out = [
            request.method + b" " + found.upstream_target + b" HTTP/1.1\r\n",
            b"host: " + f"{upstream.pool.host}:{upstream.pool.port}".encode() + b"\r\n",
        ]
        out += [n + b": " + v + b"\r\n" for n, v in headers]
        out.append(b"x-request-timeout: " + str(max(1, int(left * 1000))).encode() + b"\r\n")
        if caller.request_id_generated:
            out.append(b"x-request-id: " + caller.request_id.encode() + b"\r\n")
        out.append(b"x-forwarded-for: " + chain + b"\r\n")
        out.append(b"x-forwarded-proto: http\r\n")
        if host is not None:
            out.append(b"x-forwarded-host: " + host + b"\r\n")
        length = _first(self.headers, b"content-length")
        if request.has_body:
            out.append(
                b"content-length: " + length + b"\r\n"
                if length is not None
                else b"transfer-encoding: chunked\r\n"
            )
        out.append(b"\r\n")
        return b"".join(out)

    async def _send_body(self, upstream: UpstreamConnection) -> None:
        body = self.request.body
        if body is None:
            return
        chunked = _first(self.headers, b"content-length") is None
        sent = 0
        limit = self.config.limits.max_body_bytes
        while (chunk := await body.next()) is not None:
            sent += len(chunk)
            if sent > limit:
                raise _BodyTooLarge
            await upstream.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        if chunked:
            await upstream.write(b"0\r\n\r\n")

    async def _relay(
        self,
        upstream: UpstreamConnection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        started: float,
    ) -> bool:
        """Stream the upstream's answer to the client (rewriting errors into problems)."""
        answered = _multi(headers)
        content_type = _first(answered, b"content-type") or b""
        if status >= 400 and not content_type.lower().startswith(MEDIA_TYPE.encode()):
            body = await _read_bounded(upstream.body)
            return await self.answer_problem(_rewritten(status, body))
        self.status = status
        keep_alive = self.request.keep_alive
        length = _first(answered, b"content-length")
        framed = [(n, v) for n, v in headers if n not in _HOP_BY_HOP and n != b"content-length"]
        head = [f"HTTP/1.1 {status} {_phrase(status)}\r\n".encode()]
        head += [n + b": " + v + b"\r\n" for n, v in framed]
        head += self._tether_headers(started)
        head.append(
            b"content-length: " + length + b"\r\n"
            if length is not None
            else b"transfer-encoding: chunked\r\n"
        )
        if not keep_alive:
            head.append(b"connection: close\r\n")
        self.response_started = True
        assert upstream.body is not None
        ready, whole = upstream.body.ready()  # usually all of a small answer: one write
        if ready and length is None:
            ready = b"%x\r\n%s\r\n" % (len(ready), ready)
        if whole:
            ending = b"0\r\n\r\n" if length is None else b""
            await self.connection.write(b"".join(head) + b"\r\n" + ready + ending)
            return keep_alive
        await self.connection.write(b"".join(head) + b"\r\n" + ready)
        while (chunk := await upstream.body.next()) is not None:
            await self.connection.write(
                chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk)
            )
        if length is None:
            await self.connection.write(b"0\r\n\r\n")
        return keep_alive

    def _tether_headers(self, started: float | None = None) -> list[bytes]:
        now = time.monotonic()
        total = (now - self.request.first_byte) * 1000
        upstream = (now - started) * 1000 if started is not None else 0.0
        timing = b"gateway;dur=%.1f, upstream;dur=%.1f" % (total - upstream, upstream)
        if self.budget is not None:
            timing += b", budget;dur=%.1f" % (self.budget * 1000)
        out = [b"server-timing: " + timing + b"\r\n"]
        if self.request_id is not None:
            out.append(b"x-request-id: " + self.request_id.encode() + b"\r\n")
        return out

    async def answer_problem(self, problem: Problem, *, keep_alive: bool = True) -> bool:
        """Answer with `problem` (request id and instance filled in); the keep-alive verdict."""
        problem = Problem(
            type=problem.type,
            title=problem.title,
            status=problem.status,
            detail=problem.detail,
            instance=self.request.target.decode("latin-1"),
            request_id=self.request_id,
            extensions=problem.extensions,
        )
        self.status = problem.status
        self.outcome = self.outcome or "refused"
        if problem.status < 500 and self.outcome == "refused":
            log.info(
                json.dumps(
                    {
                        "audit": "refused",
                        "request_id": self.request_id,
                        "app_id": self.caller.app_id if self.caller else None,
                        "path": self.request.target.decode("latin-1"),
                        "reason": problem.detail,
                    }
                )
            )
        body = self.request.body
        unread_body = body is not None and not body.finished
        keep = keep_alive and not unread_body and self.request.keep_alive
        self.response_started = True
        await self.connection.write(_problem_bytes(problem, self._tether_headers(), close=not keep))
        return keep

    def log(self) -> None:
        deadline = self.deadline
        now = time.monotonic()
        self.connection.gateway.write_access_log(
            {
                "request_id": self.request_id,
                "app_id": self.caller.app_id if self.caller else None,
                "service": self.route.service.name if self.route else None,
                "version": self.route.version if self.route else None,
                "method": self.request.method.decode("latin-1"),
                "status": self.status,
                "duration_ms": round((now - self.request.first_byte) * 1000, 1),
                "budget_ms": round(self.budget * 1000, 1) if self.budget is not None else None,
                "budget_left_ms": round(deadline.remaining() * 1000, 1) if deadline else None,
                "upstream": self.upstream_address,
                "upstream_ms": round(self.upstream_time * 1000, 1),
                "outcome": self.outcome or "ok",
            }
        )


class _BodyTooLarge(Exception):
    pass


def _multi(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        out.setdefault(name, []).append(value)
    return out


def _first(headers: dict[bytes, list[bytes]], name: bytes) -> bytes | None:
    values = headers.get(name)
    return values[0] if values else None


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _problem_bytes(problem: Problem, extra: list[bytes] | None, *, close: bool) -> bytes:
    body = problem.to_json()
    head = [
        f"HTTP/1.1 {problem.status} {_phrase(problem.status)}\r\n".encode(),
        b"content-type: " + MEDIA_TYPE.encode() + b"\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
    ]
    head += extra or []
    if close:
        head.append(b"connection: close\r\n")
    return b"".join(head) + b"\r\n" + body


async def _read_bounded(body: Feed | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    if body is None:
        return b""
    while (chunk := await body.next()) is not None:
        if size < _ERROR_BODY_LIMIT:
            chunks.append(chunk[: _ERROR_BODY_LIMIT - size])
            size += len(chunk)
    return b"".join(chunks)


def _rewritten(status: int, body: bytes) -> Problem:
    """An upstream error answer as a problem: same status, its message as the detail."""
    detail = _phrase(status)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        message = data.get("message", data.get("error"))
        if isinstance(message, str) and message:
            detail = message[:1000]
    return Problem(type="about:blank", title=_phrase(status), status=status, detail=detail)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return re.sub(r"\s+", " ", text)[:200]
