"""The budget on httpx calls, for teams already on httpx (the `httpx` extra).

    client = httpx.AsyncClient(transport=TetherTransport())
    client = httpx.Client(transport=TetherSyncTransport())   # synchronous code, worker threads

Every request through it:
- gets each httpx timeout phase (connect, read, write, pool) capped at `remaining - margin`, so
  httpx gives up on its own just before tether's deadline would cancel it;
- sends `X-Request-Timeout`, `X-Request-ID` and (when tracing) `traceparent`;
- is not sent at all when less than the margin + 1 ms is left (`DeadlineExceeded`);
- records when each phase ended (`response.extensions["tether.timings"]`, a `CallTimings`, as
  the aiohttp client's `Response.timings`; a debug line on `tether.http.httpx` once the body is
  read), through httpcore's `trace` extension (one of the caller's own is still called);
- raises `DeadlineExceeded` instead of `httpx.TimeoutException` when it was the budget, not a
  configured httpx timeout, that ran out: when the phase that timed out (connect, read, write,
  pool) had its timeout capped by the budget. A configured timeout shorter than the budget
  stays httpx's to report.

The body counts too: a read timeout the budget capped while the body is read is
`DeadlineExceeded` as well (httpx alone raises `ReadTimeout`, which a service's safety net would
answer 500 instead of 504).

In synchronous code (a `def` endpoint's worker thread) no cancellation can stop a call: the
timeouts are what end it. httpcore fixes a read's timeout when the headers, or the body, start
to arrive, so a server answering in pieces, each within that timeout, could keep a call going
long past its deadline. `TetherSyncTransport` therefore also bounds every socket operation of
the wrapped `httpx.HTTPTransport` (connect, TLS, each read and write) by what is left of the
budget at that moment, through a network backend it installs in that transport's connection
pool (`_DeadlineBoundBackend`; httpcore's private pool attribute, checked against httpcore
1.0.9: a wrapped transport without it keeps the per-phase caps only). A call then ends by its
deadline, whatever pieces its server sends: `DeadlineExceeded`. Name resolution is not a
socket operation and is bounded by the resolver's own timeouts only.

httpcore's pool and cancellation (encode/httpcore#1093, also #658 and #830): a request that is
cancelled after the pool gave it a new connection, but before that connection was established,
leaves the connection in the pool, owned by nobody and never reclaimed. Enough of them and
every later request fails with `PoolTimeout` against a healthy server. Deadlines cancel
requests, so tether meets this more often than most. After any request through this transport
ends in a cancellation or an error, it removes such orphaned connections from the wrapped
`httpx.AsyncHTTPTransport`'s pool (a connection no pool request owns that is neither idle nor
closed); `reclaim_orphaned_connections()` does the same on demand. This reads httpcore's
private pool state (checked against httpcore 1.0.9) and does nothing if that state is not
there. And the close of every response body runs shielded from cancellation, because a deadline
landing inside httpcore's close would leak the request's pool slot. See docs/toolkit.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any

import httpcore
import httpx

from tether._settings import margin_seconds
from tether.deadline import Deadline, current_deadline, time_remaining
from tether.errors import DeadlineExceeded
from tether.http.timings import CallTimings
from tether.request_id import REQUEST_ID_HEADER, current_request_id
from tether.tracing import outgoing_trace_headers
from tether.wire import DEFAULT_MARGIN, REQUEST_TIMEOUT, budget_milliseconds, call_timeout

log = logging.getLogger("tether.http.httpx")

__all__ = ["TIMINGS", "TetherSyncTransport", "TetherTransport"]

_PHASES = ("connect", "read", "write", "pool")
# The phase each of httpx's timeout errors is for.
_PHASE_OF: dict[type[httpx.TimeoutException], str] = {
    httpx.ConnectTimeout: "connect",
    httpx.ReadTimeout: "read",
    httpx.WriteTimeout: "write",
    httpx.PoolTimeout: "pool",
}


class TetherTransport(httpx.AsyncBaseTransport):
    """An httpx transport that passes the ambient budget on; wraps `httpx.AsyncHTTPTransport`."""

    def __init__(
        self, wrapped: httpx.AsyncBaseTransport | None = None, *, margin: float = DEFAULT_MARGIN
    ) -> None:
        self._wrapped = wrapped if wrapped is not None else httpx.AsyncHTTPTransport()
        self._margin = margin_seconds(margin)
        self._closing: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        capped = _pass_budget_on(request, self._margin)
        timings = _timed(request, asynchronous=True)
        try:
            response = await self._wrapped.handle_async_request(request)
        except httpx.TimeoutException as exc:
            self.reclaim_orphaned_connections()
            if _budget_ran_out(exc, capped):
                raise _deadline_exceeded(request) from exc
            raise
        except BaseException:  # cancellation included: clean up the pool, then re-raise
            self.reclaim_orphaned_connections()
            raise
        if isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _Body(response.stream, self._closing, request, "read" in capped)
        response.extensions[TIMINGS] = timings
        return response

    def reclaim_orphaned_connections(self) -> int:
        """Remove connections that no request owns and that are neither idle nor closed.

        Returns how many were removed. Safe to call at any time: httpcore releases a
        connection before it forgets the request that used it, so an owned connection is never
        taken.
        """
        pool = getattr(self._wrapped, "_pool", None)
        requests = getattr(pool, "_requests", None)
        connections = getattr(pool, "_connections", None)
        if not isinstance(requests, list) or not isinstance(connections, list):
            return 0
        owned = {id(r.connection) for r in requests if getattr(r, "connection", None) is not None}
        orphans = [
            c for c in connections if id(c) not in owned and not c.is_idle() and not c.is_closed()
        ]
        for connection in orphans:
            connections.remove(connection)
            task = asyncio.get_running_loop().create_task(connection.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if orphans:
            log.info("reclaimed %d connection(s) orphaned by cancelled requests", len(orphans))
        return len(orphans)

    async def aclose(self) -> None:
        await self._wrapped.aclose()
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self) -> TetherTransport:
        await self._wrapped.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        await self.aclose()


class TetherSyncTransport(httpx.BaseTransport):
    """`TetherTransport` for `httpx.Client`; wraps `httpx.HTTPTransport`.

    For synchronous code that runs under a request's budget: a FastAPI or Starlette `def`
    endpoint (its worker thread carries the request's context), `asyncio.to_thread`. Without a
    deadline in the context, calls pass through unchanged.
    """

    def __init__(
        self, wrapped: httpx.BaseTransport | None = None, *, margin: float = DEFAULT_MARGIN
    ) -> None:
        self._wrapped = wrapped if wrapped is not None else httpx.HTTPTransport()
        self._margin = margin_seconds(margin)
        self.bounds_every_socket_operation = _bound_socket_operations(self._wrapped, self._margin)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        capped = _pass_budget_on(request, self._margin)
        timings = _timed(request, asynchronous=False)
        deadline = current_deadline()
        try:
            response = self._wrapped.handle_request(request)
        except httpx.TimeoutException as exc:
            if _budget_ran_out(exc, capped) or _spent(deadline, self._margin):
                raise _deadline_exceeded(request) from exc
            raise
        if isinstance(response.stream, httpx.SyncByteStream):
            read_capped = "read" in capped
            body = _SyncBody(response.stream, request, read_capped, deadline, self._margin)
            response.stream = body
        response.extensions[TIMINGS] = timings
        return response

    def close(self) -> None:
        self._wrapped.close()

    def __enter__(self) -> TetherSyncTransport:
        self._wrapped.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        self.close()


def _pass_budget_on(request: httpx.Request, margin: float) -> list[str]:
    """Cap `request`'s timeouts at the budget and add tether's headers (see the module
    docstring); returns the phases whose timeout the budget capped. Raises `DeadlineExceeded`
    when less than the margin is left."""
    left = call_timeout(margin=margin)
    capped: list[str] = []
    if left is not None:
        configured = request.extensions.get("timeout") or {}
        timeouts: dict[str, float] = {}
        for phase in _PHASES:
            value = configured.get(phase)
            if value is None or value > left:
                timeouts[phase] = left
                capped.append(phase)
            else:
                timeouts[phase] = value
        request.extensions["timeout"] = timeouts
        request.headers[REQUEST_TIMEOUT] = str(budget_milliseconds(left))
    request_id = current_request_id()
    if request_id is not None and REQUEST_ID_HEADER not in request.headers:
        request.headers[REQUEST_ID_HEADER] = request_id
    for name, value in outgoing_trace_headers():
        request.headers.setdefault(name, value)
    return capped


# Where a response's `CallTimings` are: `response.extensions[TIMINGS]`.
TIMINGS = "tether.timings"

# httpcore's trace events (after their `connection.`, `http11.`, `http2.` or proxy prefix) that
# end a phase of `CallTimings`. Name resolution happens inside `connect_tcp`.
_PHASE_ENDS = {
    "connect_tcp.complete": "connect",
    "connect_unix_socket.complete": "connect",
    "start_tls.complete": "connect",
    "send_request_body.complete": "request_sent",
    "receive_response_headers.complete": "first_byte",
    "receive_response_body.complete": "body_done",
}

Trace = Callable[[str, dict[str, Any]], Any]


def _timed(request: httpx.Request, *, asynchronous: bool) -> CallTimings:
    """Record `request`'s phases in a new `CallTimings`, through httpcore's `trace`
    extension: a coroutine function for the async transport, a plain one for the sync one.
    A trace of the caller's own is called after, with every event."""
    timings = CallTimings(_start=time.perf_counter())
    theirs: Trace | None = request.extensions.get("trace")

    def note(event: str) -> None:
        phase = _PHASE_ENDS.get(event.partition(".")[2])
        if phase is None:
            return
        timings.mark(phase)
        if phase == "body_done":
            log.debug("%s %s -> %s", request.method, request.url, timings)

    if asynchronous:

        async def trace(event: str, info: dict[str, Any]) -> None:
            note(event)
            if theirs is not None:
                await theirs(event, info)

        request.extensions["trace"] = trace
    else:

        def sync_trace(event: str, info: dict[str, Any]) -> None:
            note(event)
            if theirs is not None:
                theirs(event, info)

        request.extensions["trace"] = sync_trace
    return timings


def _budget_ran_out(exc: httpx.TimeoutException, capped: list[str]) -> bool:
    """Whether `exc` is for a phase whose timeout the budget capped (an httpx timeout error of
    no known phase: whether the budget capped any)."""
    phase = _PHASE_OF.get(type(exc))
    return phase in capped if phase is not None else bool(capped)


def _deadline_exceeded(request: httpx.Request) -> DeadlineExceeded:
    return DeadlineExceeded(f"deadline exceeded: no answer from {request.url} within the budget")


class _Body(httpx.AsyncByteStream):
    """A response body whose read timeout is reported as the budget's when the budget capped
    it (`DeadlineExceeded`, as for the headers), and whose close cannot be interrupted by a
    cancellation.

    httpcore forgets a finished request only at the end of closing its response. A deadline
    that cancels the task in the middle of that close (httpcore shields it from anyio's
    cancellation, not from asyncio's) would leave the request in the pool for good: one pool
    slot lost per occurrence. So the close runs in its own task, which finishes even when the
    caller is cancelled while waiting for it.
    """

    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        closing: set[asyncio.Task[None]],
        request: httpx.Request,
        read_capped: bool,
    ) -> None:
        self._inner = inner
        self._closing = closing
        self._request = request
        self._read_capped = read_capped

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.ReadTimeout as exc:
            if self._read_capped:
                raise _deadline_exceeded(self._request) from exc
            raise

    async def aclose(self) -> None:
        task = asyncio.get_running_loop().create_task(self._inner.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        await asyncio.shield(task)


class _SyncBody(httpx.SyncByteStream):
    """A synchronous response body read within the budget.

    Rule: a piece of the body that arrives after the deadline ends the call with
    `DeadlineExceeded` (the connection is closed, not reused). httpcore fixes each read's
    timeout when the body starts, at what was left then, and no cancellation reaches a thread:
    without this, a server sending its body in small pieces, each within that timeout, kept a
    call going long past its deadline. A call thus ends at most one read's wait after its
    deadline. A read timeout the budget capped, or one that came with less than the margin
    left (a read the network backend bounded by the budget), is the budget's too
    (`DeadlineExceeded`).
    """

    def __init__(
        self,
        inner: httpx.SyncByteStream,
        request: httpx.Request,
        read_capped: bool,
        deadline: Deadline | None,
        margin: float,
    ) -> None:
        self._inner = inner
        self._request = request
        self._read_capped = read_capped
        self._deadline = deadline
        self._margin = margin

    def __iter__(self) -> Iterator[bytes]:
        deadline = self._deadline
        try:
            for chunk in self._inner:
                if deadline is not None and deadline.expired:
                    raise _deadline_exceeded(self._request)
                yield chunk
        except httpx.ReadTimeout as exc:
            if self._read_capped or _spent(deadline, self._margin):
                raise _deadline_exceeded(self._request) from exc
            raise

    def close(self) -> None:
        self._inner.close()


def _spent(deadline: Deadline | None, margin: float) -> bool:
    """Whether less than `margin` is left before `deadline`: a timeout now is the budget's
    (the network backend bounds each socket operation by what is left less the margin)."""
    return deadline is not None and deadline.remaining() <= margin


def _bound_socket_operations(transport: httpx.BaseTransport, margin: float) -> bool:
    """Install `_DeadlineBoundBackend` in `transport`'s connection pool (an
    `httpx.HTTPTransport`'s, through httpcore's private `_network_backend`); False when the
    transport has no such pool."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.NetworkBackend):
        return False
    if not isinstance(backend, _DeadlineBoundBackend):
        pool._network_backend = _DeadlineBoundBackend(backend, margin)  # type: ignore[union-attr]
    return True


class _DeadlineBoundBackend(httpcore.NetworkBackend):
    """httpcore's synchronous network backend with every socket operation's timeout capped at
    what is left of the calling thread's ambient budget, less the margin, at that moment.

    Rule: with no budget left, the operation is not tried; it times out at once, as it would
    have on its socket (httpcore's `ConnectTimeout`, `ReadTimeout`, `WriteTimeout`). Without an
    ambient deadline, the timeouts pass unchanged."""

    def __init__(self, inner: httpcore.NetworkBackend, margin: float) -> None:
        self._inner = inner
        self._margin = margin

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, self._margin, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, bounded, local_address, socket_options)
        return _DeadlineBoundStream(stream, self._margin)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, self._margin, httpcore.ConnectTimeout)
        stream = self._inner.connect_unix_socket(path, bounded, socket_options)
        return _DeadlineBoundStream(stream, self._margin)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineBoundStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake is bounded by the budget left
    (see `_DeadlineBoundBackend`)."""

    def __init__(self, inner: httpcore.NetworkStream, margin: float) -> None:
        self._inner = inner
        self._margin = margin

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, self._margin, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, self._margin, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, self._margin, httpcore.ConnectTimeout)
        stream = self._inner.start_tls(ssl_context, server_hostname, bounded)
        return _DeadlineBoundStream(stream, self._margin)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _bounded(
    timeout: float | None, margin: float, timed_out: type[httpcore.TimeoutException]
) -> float | None:
    """`timeout`, capped at the ambient budget left less `margin`; raises `timed_out` when
    nothing is left."""
    left = time_remaining()
    if left is None:
        return timeout
    left -= margin
    if left <= 0.0:
        raise timed_out("the budget ran out")
    return left if timeout is None or timeout > left else timeout
