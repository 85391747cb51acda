"""tether.http.httpx_transport: TetherTransport and TetherSyncTransport against real loopback
servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import httpx
import pytest

from tether import DeadlineExceeded, _clock, deadline_after
from tether.deadline import deadline_for_thread
from tether.http import CallTimings
from tether.http.httpx_transport import TIMINGS, TetherSyncTransport, TetherTransport
from tether.request_id import request_id_scope

from .servers import LATE, echo_headers_app, uvicorn_server

pytestmark = pytest.mark.integration


async def test_passes_the_budget_and_request_id_on() -> None:
    """X-Request-Timeout (remaining - margin) and X-Request-ID reach the upstream."""
    async with uvicorn_server(echo_headers_app()) as url:
        async with httpx.AsyncClient(transport=TetherTransport()) as client:
            with request_id_scope("req-h"):
                async with deadline_after(0.5):
                    seen = (await client.get(url + "/")).json()
            bare = (await client.get(url + "/")).json()
    assert 450 <= int(seen["x-request-timeout"]) <= 495
    assert seen["x-request-id"] == "req-h"
    assert "x-request-timeout" not in bare


async def test_fails_fast_and_maps_budget_timeouts() -> None:
    """No budget: nothing sent. A slow upstream within the budget: DeadlineExceeded, in time."""
    hits: list[int] = []
    async with uvicorn_server(echo_headers_app(hits, delay=2)) as url:
        async with httpx.AsyncClient(transport=TetherTransport(margin=0.05)) as client:
            async with deadline_after(0.06):
                await asyncio.sleep(0.02)
                with pytest.raises(DeadlineExceeded):
                    await client.get(url + "/")
            assert hits == []
            start = time.perf_counter()
            with pytest.raises(DeadlineExceeded):
                async with deadline_after(0.3):
                    await client.get(url + "/")
            elapsed = time.perf_counter() - start
    assert 0.2 <= elapsed < 0.35


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await _answer_forever(reader, writer)
    except Exception:  # the client went away mid-request
        pass
    finally:
        writer.close()


async def _answer_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await reader.read(4096)
            if not chunk:
                return
            head += chunk
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()


async def _churn(client: httpx.AsyncClient, url: str, seconds: float) -> None:
    """Many requests under pool contention, each cancelled by a short tether deadline."""

    async def one() -> None:
        with contextlib.suppress(DeadlineExceeded, httpx.HTTPError):
            async with deadline_after(0.008 + random.random() * 0.02):
                await client.get(url)

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.gather(*(one() for _ in range(20)))


async def test_pool_survives_cancellation_churn() -> None:
    """httpcore#1093: after cancellation churn under contention, the pool still serves."""
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=0)
    transport = TetherTransport(httpx.AsyncHTTPTransport(limits=limits), margin=0.001)
    try:
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(2, pool=1)) as c:
            await _churn(c, url, 2.0)
            statuses = [(await c.get(url)).status_code for _ in range(5)]
            leftover = transport.reclaim_orphaned_connections()
    finally:
        server.close()
        await server.wait_closed()
    assert statuses == [200] * 5
    assert leftover == 0


def test_bad_margin_is_refused() -> None:
    """A negative or non-numeric margin raises ValueError, for both transports."""
    for transport in (TetherTransport, TetherSyncTransport):
        with pytest.raises(ValueError, match="margin"):
            transport(margin=-1)
        with pytest.raises((ValueError, TypeError), match="margin"):
            transport(margin="soon")  # type: ignore[arg-type]


async def test_the_sync_transport_passes_the_budget_on_in_a_worker_thread() -> None:
    """`httpx.Client` in a thread that carries the caller's context (`asyncio.to_thread`):
    the budget and request id are passed on; nothing is sent without budget; a slow upstream
    ends the call at the budget minus the margin (`DeadlineExceeded`); a configured httpx
    timeout shorter than the budget stays httpx's own error; without a deadline, nothing is
    added."""
    hits: list[int] = []
    async with (
        uvicorn_server(echo_headers_app()) as fast,
        uvicorn_server(echo_headers_app(hits, delay=2)) as slow,
    ):
        client = httpx.Client(transport=TetherSyncTransport(margin=0.05))
        try:
            with request_id_scope("req-s"):
                async with deadline_after(0.5):
                    seen = (await asyncio.to_thread(client.get, fast + "/")).json()
            assert 400 <= int(seen["x-request-timeout"]) <= 450
            assert seen["x-request-id"] == "req-s"
            bare = (await asyncio.to_thread(client.get, fast + "/")).json()
            assert "x-request-timeout" not in bare
            assert "x-request-id" not in bare

            async with deadline_after(0.06):
                await asyncio.sleep(0.02)
                with pytest.raises(DeadlineExceeded):
                    await asyncio.to_thread(client.get, slow + "/")
            assert hits == []

            start = time.perf_counter()
            async with deadline_after(0.3):
                with pytest.raises(DeadlineExceeded, match="within the budget"):
                    await asyncio.to_thread(client.get, slow + "/")
                assert 0.24 <= time.perf_counter() - start < 0.3
            async with deadline_after(1):
                with pytest.raises(httpx.ReadTimeout):
                    await asyncio.to_thread(client.get, slow + "/", timeout=0.05)
        finally:
            await asyncio.to_thread(client.close)


async def test_a_configured_phase_timeout_is_httpxs_own_when_the_budget_capped_another() -> None:
    """A read timeout of 0.2 s configured, the other phases unset and so capped by a 5 s budget:
    the read timing out is httpx's ReadTimeout (the budget had 4.8 s left), not
    DeadlineExceeded; a read timeout longer than the budget is capped and reported as the
    budget's. Both transports. (A margin of 50 ms: the capped read timing out and httpcore
    closing the connection are done well before the block's own deadline, even on a loaded
    machine; with 5 ms, the block's cancellation could land in that cleanup.)"""
    timeout = httpx.Timeout(None, read=0.2)
    transport = TetherTransport(margin=0.05)
    async with uvicorn_server(echo_headers_app(delay=2)) as slow:
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            async with deadline_after(5):
                with pytest.raises(httpx.ReadTimeout):
                    await client.get(slow + "/")
            async with deadline_after(0.3):
                with pytest.raises(DeadlineExceeded):
                    await client.get(slow + "/", timeout=httpx.Timeout(None, read=10))
        sync = httpx.Client(transport=TetherSyncTransport(), timeout=timeout)
        try:
            async with deadline_after(5):
                with pytest.raises(httpx.ReadTimeout):
                    await asyncio.to_thread(sync.get, slow + "/")
        finally:
            await asyncio.to_thread(sync.close)


async def test_each_call_records_its_phases_and_the_callers_trace_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`response.extensions[TIMINGS]`: a new connection has `connect`, a pooled one does not;
    the phases are ordered; a streamed body's `body_done` is set once it is read; a debug
    line says where the time went; a `trace` extension of the caller's own still sees every
    event. Both transports."""
    events: list[str] = []

    async def theirs(event: str, info: dict[str, Any]) -> None:
        events.append(event)

    async with uvicorn_server(echo_headers_app()) as url:
        async with httpx.AsyncClient(transport=TetherTransport()) as client:
            with caplog.at_level(logging.DEBUG, logger="tether.http.httpx"):
                first = (await client.get(url + "/", extensions={"trace": theirs})).extensions
            pooled = (await client.get(url + "/")).extensions[TIMINGS]
            async with client.stream("GET", url + "/") as streamed:
                before_read = streamed.extensions[TIMINGS].body_done
                await streamed.aread()
            read = streamed.extensions[TIMINGS]

        def sync_call() -> CallTimings:
            with httpx.Client(transport=TetherSyncTransport()) as sync_client:
                return sync_client.get(url + "/").extensions[TIMINGS]  # type: ignore[no-any-return]

        sync = await asyncio.to_thread(sync_call)
    timings = first[TIMINGS]
    for new in (timings, sync):
        assert new.dns is None  # httpx resolves the name while connecting
        assert new.connect is not None
        assert new.request_sent is not None
        assert new.first_byte is not None
        assert new.body_done is not None
        assert 0 < new.connect <= new.request_sent <= new.first_byte <= new.body_done
    assert pooled.connect is None
    assert pooled.body_done is not None
    assert before_read is None
    assert read.body_done is not None
    assert "connection.connect_tcp.complete" in events
    assert "http11.receive_response_body.complete" in events
    assert [r for r in caplog.records if r.name == "tether.http.httpx" and "GET" in r.getMessage()]


async def _headers_then(body_pieces: int, every: float) -> asyncio.Server:
    """A server that sends its headers at once and then its body one byte every `every`
    seconds (`body_pieces` bytes: the Content-Length); 0 pieces: a 2-byte body that never
    comes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            length = body_pieces or 2
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
            await writer.drain()
            for _ in range(body_pieces):
                await asyncio.sleep(every)
                writer.write(b"x")
                await writer.drain()
            await reader.read()  # until the client closes the connection
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client gave up
        finally:
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def _url_of(server: asyncio.Server) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


async def test_a_body_that_does_not_come_within_the_budget_is_deadline_exceeded() -> None:
    """Headers at once, then no body: the read timeout the budget capped runs out while the
    body is read, and both transports raise DeadlineExceeded, as for headers that do not
    come (httpx alone: ReadTimeout, which a service's safety net answers 500, not 504). A read
    timeout configured shorter than the budget stays httpx's ReadTimeout."""
    server = await _headers_then(0, 0)
    url = _url_of(server)
    try:
        # A 50 ms margin: the capped read timeout runs out before the block would cancel.
        async with httpx.AsyncClient(transport=TetherTransport(margin=0.05)) as client:
            start = time.perf_counter()
            with pytest.raises(DeadlineExceeded, match="within the budget"):
                async with deadline_after(0.3):
                    await client.get(url)
            async_took = time.perf_counter() - start
            async with deadline_after(2):
                with pytest.raises(httpx.ReadTimeout):
                    await client.get(url, timeout=0.1)

        def sync_call(timeout: float | None = None) -> None:
            with httpx.Client(transport=TetherSyncTransport()) as client:
                with deadline_for_thread(_clock.monotonic() + 0.3):
                    client.get(url, timeout=timeout)

        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="within the budget"):
            await asyncio.to_thread(sync_call)
        sync_took = time.perf_counter() - start
        with pytest.raises(httpx.ReadTimeout):
            await asyncio.to_thread(sync_call, 0.1)
    finally:
        server.close()
        await server.wait_closed()
    assert 0.24 <= async_took < 0.35
    assert 0.25 <= sync_took < 0.35


def _get_under_half_a_second(client: httpx.Client, url: str) -> tuple[float, BaseException | None]:
    """GET `url` in this thread under a 0.5 s budget: how long it took, and what it raised."""
    start = time.perf_counter()
    try:
        with deadline_for_thread(_clock.monotonic() + 0.5):
            client.get(url)
    except Exception as exc:
        return time.perf_counter() - start, exc
    return time.perf_counter() - start, None


async def _one_get_from(
    server: asyncio.Server, client: httpx.Client
) -> tuple[float, BaseException | None]:
    """`_get_under_half_a_second` from `server` in a worker thread; closes both after."""
    try:
        with client:
            return await asyncio.to_thread(_get_under_half_a_second, client, _url_of(server))
    finally:
        server.close()
        await server.wait_closed()


async def test_the_sync_transport_ends_a_body_that_trickles_past_the_deadline() -> None:
    """No cancellation reaches a worker thread, and httpcore fixes each read's timeout when
    the body starts. A server sending its body one byte every 0.1 s (30 bytes: 3 s) kept a
    synchronous call under a 0.5 s budget going for the whole 3 s; now the first byte after
    the deadline ends it (DeadlineExceeded), and the next call gets a fresh connection."""
    server = await _headers_then(30, 0.1)
    url = _url_of(server)

    try:
        with httpx.Client(transport=TetherSyncTransport()) as client:
            took, raised = await asyncio.to_thread(_get_under_half_a_second, client, url)
            late, _ = await asyncio.to_thread(_get_under_half_a_second, client, url)
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(raised, DeadlineExceeded), raised
    # each read is bounded by the budget left less the 5 ms margin: the call ends by then
    assert 0.45 <= took < 0.5 + LATE, took
    assert 0.45 <= late < 0.5 + LATE, late  # the same again: a fresh connection each time


async def test_the_sync_transport_ends_headers_that_trickle_past_the_deadline() -> None:
    """A server that sends its status line and then one header line every 0.1 s (30 lines:
    3 s): httpcore reads headers under one fixed timeout per read, and each line came within
    it, so a synchronous call under a 0.5 s budget ran the whole 3 s. Every socket operation
    is now bounded by what is left of the budget: the call ends by the deadline."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for number in range(30):
                await asyncio.sleep(0.1)
                writer.write(b"x-line-%d: 1\r\n" % number)
                await writer.drain()
            writer.write(b"content-length: 0\r\n\r\n")
            await reader.read()
        except OSError:
            pass  # the client gave up
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    transport = TetherSyncTransport()
    took, raised = await _one_get_from(server, httpx.Client(transport=transport))
    assert isinstance(raised, DeadlineExceeded), raised
    assert 0.45 <= took < 0.5 + LATE, took
    assert transport.bounds_every_socket_operation


def test_the_sync_transport_leaves_a_transport_without_a_pool_as_it_is() -> None:
    """A wrapped transport that is not httpx's own (no httpcore pool to bound) keeps the
    per-phase caps only, and says so."""

    class Answering(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=b"ok")

    transport = TetherSyncTransport(Answering())
    assert not transport.bounds_every_socket_operation
    with httpx.Client(transport=transport) as client:
        assert client.get("http://x/").content == b"ok"


async def test_a_trickling_body_under_a_shorter_read_timeout_is_still_the_budgets() -> None:
    """With httpx's read timeout (0.3 s) shorter than the budget (0.5 s) the read phase is
    not capped by the budget; the body's last read is, by the network backend, and its
    timeout a few ms before the deadline is the budget's: DeadlineExceeded, not httpx's
    ReadTimeout (which a service's safety net would answer 500)."""
    server = await _headers_then(30, 0.1)
    client = httpx.Client(transport=TetherSyncTransport(), timeout=httpx.Timeout(5, read=0.3))
    took, raised = await _one_get_from(server, client)
    assert isinstance(raised, DeadlineExceeded), raised
    assert 0.45 <= took < 0.5 + LATE, took
