"""Connections to upstream services: pooled keep-alive HTTP/1.1, responses parsed by httptools.

Rules:
1. A connection goes back to the pool only after a complete response on a connection that
   both sides keep alive. Anything else (a timeout, the deadline, a client that left, a parse
   error) closes it: an upstream that watches for disconnects then stops its work.
2. Bodies stream: response chunks are handed over as they arrive, and reading from the upstream
   pauses while more than `HIGH_WATER` bytes wait for the client.
3. One request, one final answer. Interim answers (1xx) before it are skipped, except 101
   Switching Protocols, which the gateway never asks for: a protocol error. The answer to a
   HEAD request ends with its head, whatever length it announces. Bytes after the final
   answer, or while the connection idles in the pool, are not the answer to anything: the
   connection is closed and they are never relayed (else they would answer the next request).
4. The loop is handed in, never looked up per request: on CPython 3.11 every
   asyncio.get_running_loop() is a getpid() system call, which cost a fifth of the gateway's time.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable
from typing import cast

import httptools

from tether.errors import one_line
from tether.gateway.config import Address

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

# The headers that frame an answer's body (names lowercased).
_BODY_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


def no_delay(transport: asyncio.Transport) -> None:
    """Send small writes at once (TCP_NODELAY): a head and a body written separately must not
    wait for the peer's delayed ACK (40 ms on Linux)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FlowControl:
    """The write side that both ends of the proxy share: asyncio calls `pause_writing` and
    `resume_writing`; a writer calls `send()` and awaits `drained()` only when it answers True,
    so the common path runs no coroutine. A closed connection releases every waiting writer."""

    transport: asyncio.Transport | None
    closed: bool

    def __init__(self) -> None:
        self._can_write = asyncio.Event()
        self._can_write.set()

    def _closed_error(self) -> Exception:
        raise NotImplementedError

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def _release_writers(self) -> None:
        self._can_write.set()

    def send(self, data: bytes) -> bool:
        """Write `data`; True when the peer is slow to read and the caller must await
        `drained()` before writing more."""
        if self.closed or self.transport is None:
            raise self._closed_error()
        self.transport.write(data)
        return not self._can_write.is_set()

    async def drained(self) -> None:
        await self._can_write.wait()

    async def write(self, data: bytes) -> None:
        if self.send(data):
            await self.drained()


class UpstreamError(Exception):
    """The upstream connection failed: `kind` is refused, reset or protocol."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Feed:
    """Chunks of a body on their way from one side to the other, with backpressure."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pause: Callable[[], None],
        resume: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pause, self._resume = pause, resume
        self._paused = False

    def put(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()
        self._wake()

    @property
    def finished(self) -> bool:
        """True once the whole body has arrived (or failed)."""
        return self._done

    def end(self, error: BaseException | None = None) -> None:
        self._done = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def ready(self) -> tuple[bytes, bool]:
        """Every chunk already here, joined, and whether that is the whole body (no wait)."""
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            self._resume()
        return data, self._done and self._error is None

    async def next(self) -> bytes | None:
        """The next chunk, or None at the end; raises the error that ended the body."""
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                return None
            self._waiter = self._loop.create_future()
            await self._waiter
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._paused and self._size < LOW_WATER:
            self._paused = False
            self._resume()
        return chunk


def _relayable_framing(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an answer's body can be relayed as it is framed: no Transfer-Encoding, or
    exactly `chunked`. Any other coding (`gzip, chunked`, a misspelt `chunked`) would reach the
    client still encoded, or delimited by the connection's end where the upstream meant
    otherwise (RFC 9112 6.3); proxies answer it 502."""
    codings = [value for name, value in headers if name == b"transfer-encoding"]
    return not codings or (len(codings) == 1 and codings[0].strip().lower() == b"chunked")


class UpstreamConnection(FlowControl, asyncio.Protocol):
    """One keep-alive connection to an upstream; one exchange at a time."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] | None = None
        self.body: Feed | None = None
        self.complete = False
        self._keep_alive = False
        self._ends_at_eof = False  # the answer's body runs to the connection's end
        self._awaiting = False  # between start() and the final answer's end
        self._head_only = False  # the request was HEAD: the answer has no body
        self._interim = False  # inside a 1xx answer, which is skipped
        self._unsolicited = False  # bytes came that answer nothing: the connection must close
        self.reused = False  # taken from the pool (rule 6 of retries.py)
        self.received = False  # a byte of the current answer came
        FlowControl.__init__(self)
        self._head_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        no_delay(self.transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        if not self._awaiting:  # idle in the pool, or after the answer: see rule 3
            self._unsolicited = True
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if not self.complete:
                detail = f"the upstream's answer is not valid HTTP: {one_line(str(exc))}"
                self._fail(UpstreamError("protocol", detail))
            self.close()  # after a complete answer: bytes that answer nothing (rule 3)
            return
        if self._unsolicited:
            self.close()

    def eof_received(self) -> bool | None:
        # The connection's end completes an answer only when it is what delimits the body.
        # Anywhere else (within the head, short of a Content-Length, inside chunks) the answer
        # is cut short: connection_lost() reports it, and a client already being answered
        # loses its connection rather than get a short body it would take for a whole one.
        if self._ends_at_eof and not self.complete:
            self.on_message_complete()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._release_writers()
        if not self.complete:
            self._fail(UpstreamError("reset", "the upstream closed the connection mid-answer"))

    def _closed_error(self) -> Exception:
        return UpstreamError("reset", "the upstream connection is closed")

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []  # each message's own: an interim answer's are not the final one's
        if not self._awaiting:  # a second answer after the final one (rule 3)
            self._unsolicited = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))  # names compare lowercased everywhere

    def on_headers_complete(self) -> None:
        if not self._awaiting:
            return
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                self._fail(UpstreamError("protocol", "the upstream switched protocols unasked"))
                self._awaiting = False
                self._unsolicited = True  # closed after this read
            else:
                self._interim = True  # 100 Continue, 103 Early Hints, ...: skipped
            return
        if not _relayable_framing(self._headers):
            self._fail(
                UpstreamError(
                    "protocol",
                    "the upstream's answer has a transfer coding "
                    "other than chunked, which the gateway cannot relay",
                )
            )
            self._awaiting = False
            self._unsolicited = True  # closed after this read
            return
        # Asked now: httptools forgets it once the message is complete.
        self._keep_alive = bool(self._parser.should_keep_alive())
        # RFC 9112 6.3: an answer with neither Content-Length nor Transfer-Encoding has a body
        # that ends with the connection (httptools completes bodiless answers by itself).
        self._ends_at_eof = not any(name in _BODY_FRAMING for name, _ in self._headers)
        self._stop_head_timer()
        if self._head is not None and not self._head.done():
            self._head.set_result((status, self._headers))
        if self._head_only:
            # httptools cannot be told that an answer to HEAD has no body, and would wait for
            # the length it announces: the answer ends here, and the parser, left expecting a
            # body, is not used again (the connection is not pooled).
            self._keep_alive = False
            self._ends_at_eof = False
            self._finish_answer()

    def on_body(self, body: bytes) -> None:
        if self._awaiting and not self._interim and self.body is not None:
            self.body.put(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False  # the final answer is still to come
        elif self._awaiting:
            self._finish_answer()

    def _finish_answer(self) -> None:
        self._awaiting = False
        self.complete = True
        if self.body is not None:
            self.body.end()

    # -- the exchange -------------------------------------------------------------------

    def start(
        self, *, head_only: bool = False
    ) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]]:
        """Prepare for one response; the future resolves with its status and headers (of the
        final answer). `head_only`: the request is HEAD, so the answer has no body."""
        self._headers = []
        self.complete = False
        self._ends_at_eof = False
        self._awaiting = True
        self._head_only = head_only
        self.received = False
        self._interim = False
        loop = self.pool.loop
        self._head = loop.create_future()
        assert self.transport is not None
        self.body = Feed(loop, self.transport.pause_reading, self.transport.resume_reading)
        return self._head

    def expect_head_within(self, seconds: float) -> None:
        """Fail the head future with TimeoutError unless the response's headers arrive in
        `seconds` (one timer, no task cancellation: the caller decides what a timeout means)."""
        self._stop_head_timer()
        self._head_timer = self.pool.loop.call_later(seconds, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._head is not None and not self._head.done():
            self._head.set_exception(TimeoutError())

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def keep_alive(self) -> bool:
        return self.complete and not self.closed and self._keep_alive and not self._unsolicited

    def _fail(self, error: UpstreamError) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved here; the waiter sees it too
        if self.body is not None:
            self.body.end(error)

    def close(self) -> None:
        self.closed = True
        self._stop_head_timer()
        if self.transport is not None:
            self.transport.close()


class EndpointPool:
    """Idle keep-alive connections to one upstream address."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        zone: str = "",
        *,
        max_idle: int = 64,
    ) -> None:
        self.loop = loop
        self.host, self.port, self.zone = host, port, zone
        self.label = str(Address(host, port))
        self.host_header = f"host: {self.label}\r\n".encode()
        # Passive health (see balancing.py): consecutive refusals and the end of the rest.
        self.refusals = 0
        self.resting_until = 0.0
        self._idle: list[UpstreamConnection] = []
        self._max_idle = max_idle
        self.in_flight = 0

    def take(self) -> UpstreamConnection | None:
        """An idle pooled connection, or None (no coroutine on the common path)."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                connection.reused = True
                return connection
        return None

    async def connect(self, connect_timeout: float) -> UpstreamConnection:
        """A new connection, opened within `connect_timeout` seconds (callers `take()` an idle
        one first)."""
        try:
            async with asyncio.timeout(connect_timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port
                )
        except ConnectionRefusedError as exc:
            raise UpstreamError("refused", f"{self.label} refused the connection") from exc
        except socket.gaierror as exc:
            raise UpstreamError("dns", f"cannot resolve {self.host}: {exc}") from exc
        except TimeoutError:
            raise  # an OSError too, but the caller's to judge: 504 upstream-timeout
        except OSError as exc:
            raise UpstreamError("refused", f"cannot connect to {self.label}: {exc}") from exc
        return protocol

    def release(self, connection: UpstreamConnection) -> None:
        """Back to the pool if the exchange ended cleanly; closed otherwise."""
        if connection.keep_alive() and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
