"""TetherMiddleware under hypercorn, over HTTP/1.1 and HTTP/2 (h2c), and httpx over HTTP/2.

hypercorn, like uvicorn and granian, does not cancel a handler whose client has gone; it does
report the departure as `http.disconnect`, for a closed connection and, over HTTP/2, for a
single stream the client resets (RST_STREAM) while the connection stays open. The middleware
turns both into the handler's cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tether import DeadlineExceeded, deadline_after
from tether.http import TetherMiddleware
from tether.http.httpx_transport import TetherTransport

from .servers import LATE, hypercorn_server, wait_until
from .test_failure_cases import app_with

pytestmark = pytest.mark.integration


class Recorder:
    """A Starlette app whose `/slow/{name}` handler waits 10 s (recording when each started
    and was cancelled), `/wait/{ms}` answers after that many ms, and `/boom` raises."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.cancelled: dict[str, float] = {}
        self.app = app_with(
            Route("/slow/{name}", self.slow),
            Route("/wait/{ms:int}", self.wait),
            Route("/boom", self.boom),
        )

    async def slow(self, request: Request) -> Response:
        name = request.path_params["name"]
        self.started[name] = time.perf_counter()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.cancelled[name] = time.perf_counter()
            raise
        return Response(b"late")

    async def wait(self, request: Request) -> Response:
        await asyncio.sleep(request.path_params["ms"] / 1000)
        return Response(b"waited")

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("secret detail")


def http_client(version: str) -> httpx.AsyncClient:
    """HTTP/1.1, or HTTP/2 with prior knowledge (h2c: no TLS, no upgrade)."""
    if version == "2":
        return httpx.AsyncClient(http1=False, http2=True, timeout=5)
    return httpx.AsyncClient(timeout=5)


@pytest.mark.parametrize("version", ["1.1", "2"])
async def test_budget_safety_net_and_headers_under_hypercorn(version: str) -> None:
    """The middleware's answers under hypercorn, over both protocols: the handler is cancelled
    at a 300 ms budget and the client gets its 504 problem then; an exception becomes a 500
    problem without its text and the server keeps serving; a malformed X-Request-ID is a 400;
    every answer carries X-Request-ID and Server-Timing."""
    recorder = Recorder()
    async with hypercorn_server(recorder.app) as url, http_client(version) as client:
        start = time.perf_counter()
        answer = await client.get(url + "/slow/a", headers={"x-request-timeout": "300"})
        took = time.perf_counter() - start
        assert answer.http_version == f"HTTP/{version}"
        assert answer.status_code == 504
        assert answer.json()["type"].endswith("deadline-exceeded")
        assert 0.29 <= took < 0.3 + LATE
        assert recorder.cancelled["a"] - start < 0.3 + LATE
        assert answer.headers["x-request-id"]
        assert "budget;dur=300.0" in answer.headers["server-timing"]

        failed = await client.get(url + "/boom", headers={"x-request-id": "req-boom"})
        assert failed.status_code == 500
        assert failed.headers["content-type"] == "application/problem+json"
        assert failed.json()["type"].endswith("internal-error")
        assert "secret" not in failed.text
        assert failed.headers["x-request-id"] == "req-boom"

        refused = await client.get(url + "/wait/1", headers={"x-request-id": "bad id"})
        assert refused.status_code == 400
        assert refused.json()["type"].endswith("validation-failed")

        served = await client.get(url + "/wait/1")
        assert served.status_code == 200
        assert served.text == "waited"


async def test_a_closed_connection_cancels_the_handler_within_50ms() -> None:
    """HTTP/1.1: the client closes mid-request (with a reset); the handler is cancelled within
    50 ms."""
    recorder = Recorder()
    async with hypercorn_server(recorder.app) as url:
        port = int(url.rsplit(":", 1)[1])
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow/a HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        await wait_until(lambda: recorder.started, bool, 2)
        await asyncio.sleep(0.05)  # past the 5 ms after which the middleware watches
        writer.close()
        closed_at = time.perf_counter()
        await wait_until(lambda: recorder.cancelled, bool, 2)
    assert recorder.cancelled["a"] - closed_at <= 0.05


async def test_an_http2_stream_reset_cancels_only_its_own_handler() -> None:
    """HTTP/2, two requests on one connection: the client resets one stream (RST_STREAM,
    CANCEL). Its handler is cancelled within 50 ms; the other request, on the same still-open
    connection, runs on and gets its answer."""
    recorder = Recorder()
    async with hypercorn_server(recorder.app) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        connection.initiate_connection()
        for stream_id, path in ((1, "/slow/reset"), (3, "/wait/400")):
            connection.send_headers(
                stream_id,
                [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
                end_stream=True,
            )
        writer.write(connection.data_to_send())
        await writer.drain()
        await wait_until(lambda: recorder.started, bool, 2)
        await asyncio.sleep(0.05)

        connection.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
        writer.write(connection.data_to_send())
        await writer.drain()
        reset_at = time.perf_counter()

        status = body = None
        ended = False
        while not ended:  # the other stream's answer, on the same connection
            data = await asyncio.wait_for(reader.read(65536), 2)
            assert data, "the server closed the connection"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 3:
                    status = dict(event.headers)[b":status"]
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == 3:
                    body = (body or b"") + event.data
                    connection.acknowledge_received_data(len(event.data), 3)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == 3:
                    ended = True
            writer.write(connection.data_to_send())
        writer.close()
    assert recorder.cancelled["reset"] - reset_at <= 0.05
    assert (status, body) == (b"200", b"waited")


async def test_httpx_over_http2_stops_the_upstream_at_the_budget_it_sent() -> None:
    """httpx over HTTP/2 does not reset the stream of a call it abandons (encode/httpcore#943,
    #1022): the upstream is never told. Through TetherTransport the call carries its budget,
    so the upstream (tether behind hypercorn) still stops within 100 ms of the caller's
    deadline, and the connection serves the next call."""
    recorder = Recorder()
    transport = TetherTransport(httpx.AsyncHTTPTransport(http1=False, http2=True))
    async with (
        hypercorn_server(recorder.app) as url,
        httpx.AsyncClient(transport=transport) as client,
    ):
        start = time.perf_counter()
        # Both ends run out of the same budget: usually httpx's capped read timeout fires
        # first (DeadlineExceeded); on a busy machine the upstream's own 504 can arrive first.
        # Either way the upstream is told by the budget, not by the abandoned stream.
        try:
            async with deadline_after(0.3):
                outcome: object = (await client.get(url + "/slow/abandoned")).status_code
        except DeadlineExceeded:
            outcome = "deadline exceeded"
        assert outcome in ("deadline exceeded", 504)
        await wait_until(lambda: recorder.cancelled, bool, 2)
        answer = await client.get(url + "/wait/1")
    assert answer.http_version == "HTTP/2"
    assert answer.status_code == 200
    assert recorder.cancelled["abandoned"] - (start + 0.3) < LATE


@pytest.mark.parametrize("client_leaves", [True, False])
async def test_an_unread_upload_does_not_hang_the_answer_at_the_deadline(
    client_leaves: bool,
) -> None:
    """A handler that never reads its 300 KB upload runs into its 300 ms budget. hypercorn
    completes a send only once its queue of messages for the app has room, and the
    middleware's read-ahead held a full 64 KiB for the app that had ended: its 504 (or, with
    the client gone, its attempt at one) hung for good. Now the request ends at the budget;
    a client that stayed gets the 504."""
    ended: list[float] = []

    async def never_reads(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(10)

    inner = TetherMiddleware(never_reads, default_budget=0.3, max_budget=0.3)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await inner(scope, receive, send)
        finally:
            if scope["type"] == "http":
                ended.append(time.perf_counter())

    async with hypercorn_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.perf_counter()
        writer.write(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 300000\r\n\r\n")
        with contextlib.suppress(ConnectionError, TimeoutError):
            for _ in range(30):  # as much as the server takes in 0.1 s
                writer.write(b"x" * 10_000)
                await asyncio.wait_for(writer.drain(), 0.1 - (time.perf_counter() - started))
                await asyncio.sleep(0.001)  # apart: hypercorn queues each piece as a message
        if client_leaves:
            writer.close()
            answer = b""
        else:
            answer = await asyncio.wait_for(reader.read(65536), 0.3 + 2 * LATE)
            writer.close()
        await wait_until(lambda: ended, bool, 0.3 + 2 * LATE)
    assert ended[0] - started < 0.3 + LATE
    if not client_leaves:
        assert answer.startswith(b"HTTP/1.1 504")
