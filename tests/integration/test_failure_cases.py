"""The background texts' failure cases, with real servers on loopback and real gRPC.

(a) an HTTP service's budget reaches a slow gRPC service and stops it;
(b) three hops, each seeing a budget smaller by at least the work done before it;
(d) a filter that answers without calling the rest of the chain is named;
(e) children asking for longer timeouts than the request has all end by its deadline;
and a client that disconnects cancels the handler. ((c), the raising auth interceptor, is in
test_grpc.py.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import tether.grpc
from tether import TaskGroup, chain, current_deadline, deadline_after, detached, time_remaining
from tether.http import TetherMiddleware

from .grpc_services import grpc_server, method
from .servers import free_port, listening, raw_exchange, uvicorn_serving

pytestmark = pytest.mark.integration


def app_with(*routes: Route, **settings: Any) -> Starlette:
    """A Starlette app set up as the docs say: TetherMiddleware added with add_middleware."""
    app = Starlette(routes=list(routes))
    app.add_middleware(TetherMiddleware, **settings)
    return app


async def test_a_http_budget_stops_a_slow_grpc_service() -> None:
    """(a) 300 ms budget, gRPC handler sleeping 5 s: 504 at 300 ms, handler cancelled, nothing
    left running or open."""
    grpc_cancelled_at: list[float] = []

    async def slow(request: bytes, context: Any) -> bytes:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            grpc_cancelled_at.append(time.perf_counter())
            raise
        return b"late"

    async def warm(request: bytes, context: Any) -> bytes:
        return b"warm"

    handlers = {
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Warm": grpc.unary_unary_rpc_method_handler(warm),
    }
    async with grpc_server(handlers) as target, tether.grpc.insecure_channel(target) as channel:

        async def orders(request: Request) -> Response:
            path = request.path_params["kind"]
            answer = await channel.unary_unary(method(path))(b"")
            return Response(answer)

        app = app_with(Route("/orders/{kind}", orders))
        async with uvicorn_serving(app) as (url, server), aiohttp.ClientSession() as client:
            headers = {"x-request-timeout": "300", "connection": "close"}
            async with client.get(url + "/orders/Warm", headers=headers) as warm_answer:
                assert await warm_answer.read() == b"warm"
            await asyncio.sleep(0.05)
            baseline = set(asyncio.all_tasks())
            grpc_internal = len(_grpc_internal(baseline))

            sent = time.perf_counter()
            async with client.get(url + "/orders/Slow", headers=headers) as answer:
                answered = time.perf_counter()
                body = await answer.json()
            await asyncio.sleep(0.1)
            pending = {t for t in asyncio.all_tasks() if not t.done()}
            leftover = {t for t in pending - baseline if t not in _grpc_internal(pending)}
            grpc_internal_after = len(_grpc_internal(pending))
            open_connections = len(server.server_state.connections)

    deadline = sent + 0.3
    assert answer.status == 504
    assert body["type"].endswith("deadline-exceeded")
    # The gRPC call gets 97% of the budget minus the 5 ms margin (so that grpc's own rounding
    # cannot send the callee more than the caller has), so the 504 may come up to ~15 ms early.
    assert 0.28 <= answered - sent <= 0.33, f"answered after {answered - sent:.3f} s"
    assert len(grpc_cancelled_at) == 1
    assert abs(grpc_cancelled_at[0] - deadline) <= 0.05
    assert leftover == set()
    assert grpc_internal_after == grpc_internal
    assert open_connections == 0


async def test_a_fanned_out_call_that_runs_out_of_budget_is_still_a_504() -> None:
    """(a) as a fan-out: the handler calls the slow gRPC service and a fast one at once, in an
    asyncio.TaskGroup. The slow call's own timer ends it (at 97% of the budget, before the
    request's), so its DeadlineExceeded leaves the group inside an ExceptionGroup: the client
    gets the same 504 as for the call made alone, not a 500."""

    async def slow(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(5)
        return b"late"

    async def fast(request: bytes, context: Any) -> bytes:
        return b"fast"

    handlers = {
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Fast": grpc.unary_unary_rpc_method_handler(fast),
    }
    async with grpc_server(handlers) as target, tether.grpc.insecure_channel(target) as channel:

        async def check(name: str) -> bytes:
            answer: bytes = await channel.unary_unary(method(name))(b"")
            return answer

        async def orders(request: Request) -> Response:
            async with asyncio.TaskGroup() as group:
                for name in ("Fast", "Slow"):
                    group.create_task(check(name))
            return Response(b"never")

        app = app_with(Route("/orders", orders))
        async with uvicorn_serving(app) as (url, _), aiohttp.ClientSession() as client:
            sent = time.perf_counter()
            async with client.get(url + "/orders", headers={"x-request-timeout": "300"}) as answer:
                answered = time.perf_counter()
                body = await answer.json()
    assert answer.status == 504, body
    assert body["type"].endswith("deadline-exceeded")
    assert 0.28 <= answered - sent <= 0.33, f"answered after {answered - sent:.3f} s"


async def test_a_fan_out_whose_upstream_is_down_is_a_503_not_a_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler fans out with an anyio task group (Starlette's own) to an upstream that
    answers and one that refuses connections: the client gets the 503 of the refused call made
    alone, and the log says so at INFO, naming it, with no traceback. A group that also holds
    a bug (a child whose clean-up fails when the group cancels it) stays a 500, logged with its
    traceback."""
    import anyio

    from tether.http import Client

    async def fine(request: Request) -> Response:
        return Response(b"fine")

    closed = f"http://127.0.0.1:{free_port()}/"  # nothing listens there

    async def report(request: Request) -> Response:
        async with Client() as client, anyio.create_task_group() as group:
            group.start_soon(client.get, str(request.url_for("fine")))
            group.start_soon(client.get, closed)
            if request.query_params.get("bug"):
                group.start_soon(_fails_when_cancelled)
        return Response(b"never")

    app = app_with(Route("/fine", fine, name="fine"), Route("/report", report))
    with caplog.at_level(logging.INFO, logger="tether.http"):
        async with uvicorn_serving(app) as (url, _), aiohttp.ClientSession() as client:
            async with client.get(url + "/report") as answer:
                body = await answer.json()
            async with client.get(url + "/report?bug=1") as buggy:
                buggy_body = await buggy.json()
    assert answer.status == 503, body
    assert body["type"].endswith("upstream-unavailable")
    assert buggy.status == 500, buggy_body
    assert buggy_body["type"].endswith("internal-error")
    outcome, bug = [r for r in caplog.records if r.name == "tether.http"]
    assert outcome.levelno == logging.INFO
    assert outcome.getMessage().startswith(f"request {body['request_id']} ended with Upstream")
    assert closed.rstrip("/") in outcome.getMessage()
    assert outcome.exc_info is None
    assert bug.levelno == logging.ERROR
    assert bug.exc_info is not None


async def _fails_when_cancelled() -> None:
    """A child whose clean-up has a bug: cancelled, it raises instead."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        raise KeyError("a bug in clean-up") from None


def _grpc_internal(tasks: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """grpc.aio's own loop tasks (compiled coroutines; the server replaces one per call)."""
    return {t for t in tasks if not isinstance(t.get_coro(), types.CoroutineType)}


async def test_b_three_hops_each_see_a_smaller_budget() -> None:
    """(b) HTTP -> gRPC -> gRPC, 100 ms of work at each hop: each budget is smaller than the
    previous one by at least that work (and by not much more)."""
    seen: dict[str, float] = {}

    async def hop3(request: bytes, context: Any) -> bytes:
        seen["hop3"] = time_remaining() or 0.0
        await asyncio.sleep(0.1)
        return b"done"

    async with grpc_server({"Hop3": grpc.unary_unary_rpc_method_handler(hop3)}) as target3:
        async with tether.grpc.insecure_channel(target3) as to_hop3:

            async def hop2(request: bytes, context: Any) -> bytes:
                seen["hop2"] = time_remaining() or 0.0
                await asyncio.sleep(0.1)
                return await to_hop3.unary_unary(method("Hop3"))(b"")

            handlers2 = {"Hop2": grpc.unary_unary_rpc_method_handler(hop2)}
            async with grpc_server(handlers2) as target2:
                async with tether.grpc.insecure_channel(target2) as to_hop2:

                    async def hop1(request: Request) -> Response:
                        seen["hop1"] = time_remaining() or 0.0
                        await asyncio.sleep(0.1)
                        return Response(await to_hop2.unary_unary(method("Hop2"))(b""))

                    app = app_with(Route("/hop1", hop1))
                    async with uvicorn_serving(app) as (url, _), aiohttp.ClientSession() as c:
                        async with c.get(url + "/hop1", headers={"x-request-timeout": "1000"}) as r:
                            assert await r.read() == b"done"

    hop1, hop2, hop3_budget = seen["hop1"], seen["hop2"], seen["hop3"]
    assert 0.99 <= hop1 <= 1.0
    # Each gRPC hop gets what is left after the work, less the 5 ms margin, less the 3% that
    # grpc's own timeout encoding may add back (tether.grpc.client.timeout_for_grpc).
    for before, after in ((hop1, hop2), (hop2, hop3_budget)):
        most = (before - 0.1 - 0.005) * 0.97
        assert most - 0.03 <= after <= most, f"{before:.3f} -> {after:.3f} (at most {most:.3f})"


async def test_d_a_short_circuiting_filter_is_named(caplog: pytest.LogCaptureFixture) -> None:
    """(d) A filter that answers without calling next shows up in the log and the response."""

    async def require_token(request: Request, next: Any) -> Response:
        if "authorization" not in request.headers:
            return JSONResponse({"error": "no token"}, status_code=401)
        return await next(request)

    async def orders(request: Request) -> Response:
        return JSONResponse({"orders": []})

    def name_it(filter_name: str, request: Any, response: Any) -> None:
        response.headers["x-answered-by"] = filter_name

    endpoint = chain(require_token, orders, on_short_circuit=name_it)
    app = app_with(Route("/orders", endpoint))
    with caplog.at_level(logging.INFO, logger="tether.chain"):
        async with uvicorn_serving(app) as (url, _), aiohttp.ClientSession() as client:
            async with client.get(url + "/orders") as refused:
                answered_by = refused.headers.get("x-answered-by", "")
            async with client.get(url + "/orders", headers={"authorization": "t"}) as passed:
                passed_by = passed.headers.get("x-answered-by")
    assert refused.status == 401
    assert answered_by.endswith("require_token")
    assert passed.status == 200
    assert passed_by is None
    records = [r for r in caplog.records if r.name == "tether.chain"]
    assert [r.answered_by for r in records] == [answered_by]  # type: ignore[attr-defined]


async def test_e_children_asking_for_more_time_end_by_the_request_deadline() -> None:
    """(e) A handler's children each ask for 10 s inside a 300 ms request: all have ended by
    the request's deadline, and the client gets its 504 then."""
    ended: list[float] = []
    request_deadline: list[float] = []

    async def child() -> None:
        try:
            async with deadline_after(10):
                await asyncio.sleep(10)
        finally:
            ended.append(time.perf_counter())

    async def report(request: Request) -> Response:
        request_deadline.append(time.perf_counter() + (time_remaining() or 0.0))
        async with TaskGroup() as group:
            for _ in range(5):
                group.create_task(child())
        return Response(b"never")

    app = app_with(Route("/report", report))
    async with uvicorn_serving(app) as (url, _), aiohttp.ClientSession() as client:
        async with client.get(url + "/report", headers={"x-request-timeout": "300"}) as answer:
            answered = time.perf_counter()
    assert answer.status == 504
    assert len(ended) == 5
    assert max(ended) <= request_deadline[0] + 0.01
    assert answered <= request_deadline[0] + 0.03


@pytest.mark.parametrize("upload", [False, True], ids=["get", "mid-upload"])
@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_client_disconnect_cancels_the_handler_within_50ms(http: str, upload: bool) -> None:
    """The client closes mid-request; the handler is cancelled within 50 ms (uvicorn). Also
    in the middle of an upload the handler has not started reading (it used to run on: the
    watch held the first piece for it and read no further)."""
    cancelled_at: list[float] = []
    started = asyncio.Event()

    async def slow(request: Request) -> Response:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled_at.append(time.perf_counter())
            raise
        return Response(b"late")

    app = app_with(Route("/slow", slow, methods=["GET", "POST"]))
    async with uvicorn_serving(app, http=http) as (url, _server):
        port = int(url.rsplit(":", 1)[1])
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if upload:
            writer.write(b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
            writer.write(b"a" * 1000)
        else:
            writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(started.wait(), 2)
        for piece in (b"b", b"c") if upload else ():
            await asyncio.sleep(0.03)  # the watch is reading by now
            writer.write(piece * 1000)
            await writer.drain()
        writer.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x00" * 8
        )
        writer.close()
        closed_at = time.perf_counter()
        for _ in range(100):
            if cancelled_at:
                break
            await asyncio.sleep(0.005)
    assert len(cancelled_at) == 1
    assert cancelled_at[0] - closed_at <= 0.05


@asynccontextmanager
async def granian_serving(record: Path) -> AsyncIterator[int]:
    """`integration.apps.disconnect_app` under granian, in its own process, recording into
    `record`; yields its port."""
    port = free_port()
    env = {**os.environ, "TETHER_TEST_RECORD": str(record)}
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "integration.apps.disconnect_app:app",
        cwd=os.path.dirname(os.path.dirname(__file__)),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert await listening(port, 10), "granian did not start"
        yield port
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)


async def test_client_disconnect_cancels_the_handler_under_granian(tmp_path: Path) -> None:
    """The same under granian, a server in its own process: cancelled within 50 ms."""
    record = tmp_path / "events"
    async with granian_serving(record) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        for _ in range(200):
            if record.exists() and "started" in record.read_text():
                break
            await asyncio.sleep(0.01)
        writer.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x00" * 8
        )
        writer.close()
        closed_at = time.monotonic()
        for _ in range(100):
            if "cancelled" in record.read_text():
                break
            await asyncio.sleep(0.005)
        events = dict(line.split() for line in record.read_text().splitlines())
    assert "cancelled" in events, f"handler not cancelled; events: {events}"
    assert float(events["cancelled"]) - closed_at <= 0.05


async def test_background_work_after_a_file_answer_runs_to_its_end_under_granian(
    tmp_path: Path,
) -> None:
    """granian sends a FileResponse's file itself (ASGI's pathsend) and then reports the end
    of the exchange as a disconnect: the background task after it is not cancelled (the client
    did not leave), and the file arrived whole."""
    record = tmp_path / "events"
    async with granian_serving(record) as port, aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/file") as answer:
            body = await answer.read()
        assert answer.status == 200
        assert "X-Request-ID" in answer.headers
        for _ in range(200):
            if record.exists() and "background" in record.read_text():
                break
            await asyncio.sleep(0.01)
        events = record.read_text()
    assert "background-done" in events, events
    app_file = Path(__file__).parent / "apps" / "disconnect_app.py"
    assert body == app_file.read_bytes()


@pytest.mark.parametrize("root_path", ["", "/orders"])
async def test_a_stream_on_an_unbounded_path_runs_until_its_client_leaves(root_path: str) -> None:
    """Server-sent events under uvicorn: on an unbounded path the stream outlives the default
    budget, without a deadline, and ends within 50 ms of its client leaving; the same stream
    on another path is cut at the default budget. With `--root-path` (uvicorn puts it in front
    of the scope's path) the app's own routes are what `unbounded_paths` names."""
    ended: dict[str, float] = {}
    deadlines: list[object] = []

    async def events(request: Request) -> StreamingResponse:
        deadlines.append(current_deadline())

        async def ticks() -> Any:
            try:
                for n in range(1000):
                    yield f"data: {n}\n\n"
                    await asyncio.sleep(0.05)
            finally:
                ended[request.url.path.removeprefix(root_path)] = time.perf_counter()

        return StreamingResponse(ticks(), media_type="text/event-stream")

    app = app_with(
        Route("/events", events),
        Route("/ticks", events),
        default_budget=0.3,
        max_budget=1.0,
        unbounded_paths=["/events"],
    )
    async with uvicorn_serving(app, http="httptools", root_path=root_path) as (url, _server):
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            async with session.get(f"{url}/ticks") as cut:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await cut.read()
            assert 0.3 <= time.perf_counter() - started < 0.5
            async with session.get(f"{url}/events") as stream:
                assert stream.headers["server-timing"].startswith("app;dur=")
                assert "budget" not in stream.headers["server-timing"]
                seen = 0
                while time.perf_counter() - started < 1.5:  # past both budgets
                    seen += (await stream.content.readline()).startswith(b"data:")
                assert seen >= 15
                left_at = time.perf_counter()
                stream.connection.transport.abort()  # type: ignore[union-attr]
        for _ in range(100):
            if "/events" in ended:
                break
            await asyncio.sleep(0.005)
    assert deadlines[0] is not None  # /ticks
    assert deadlines[1] is None  # /events
    assert ended["/events"] - left_at <= 0.05


async def test_background_tasks_run_under_the_request_budget_unless_detached() -> None:
    """Starlette's background tasks run after the answer, inside the request: its deadline
    still holds them (the work is cancelled at it), and `detached()` inside the task lets it
    run to its end. Either way the client has its answer at once."""
    outcome: dict[str, str] = {}

    async def work(name: str) -> None:
        try:
            await asyncio.sleep(0.5)
            outcome[name] = "done"
        except asyncio.CancelledError:
            outcome[name] = "cancelled"
            raise

    async def detached_work(name: str) -> None:
        async with detached():
            await work(name)

    async def bounded(request: Request) -> Response:
        return Response(b"ok", background=BackgroundTask(work, "bounded"))

    async def freed(request: Request) -> Response:
        return Response(b"ok", background=BackgroundTask(detached_work, "detached"))

    app = app_with(Route("/bounded", bounded), Route("/detached", freed), default_budget=0.2)
    async with uvicorn_serving(app, http="httptools") as (url, _server):
        async with aiohttp.ClientSession() as session:
            for path in ("/bounded", "/detached"):
                started = time.perf_counter()
                async with session.get(f"{url}{path}") as answer:
                    assert (answer.status, await answer.read()) == (200, b"ok")
                assert time.perf_counter() - started < 0.1
        for _ in range(200):
            if len(outcome) == 2:
                break
            await asyncio.sleep(0.01)
    assert outcome == {"bounded": "cancelled", "detached": "done"}


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_background_work_reading_after_the_answer_hears_the_end_at_once(http: str) -> None:
    """A background task that reads the request's `receive` after the answer (the watch has
    been running since 5 ms in, and holds the body it read ahead) gets `http.disconnect` at
    once under uvicorn, as without tether; it used to wait for the request's whole budget and
    be cancelled at its end."""
    heard: list[tuple[str, float]] = []

    async def listen(request: Request) -> None:
        started = time.perf_counter()
        while not heard or heard[-1][0] != "http.disconnect":
            message = await request.receive()
            heard.append((message["type"], time.perf_counter() - started))

    async def answer(request: Request) -> Response:
        await asyncio.sleep(0.02)
        return Response(b"ok", background=BackgroundTask(listen, request))

    app = app_with(Route("/", answer), default_budget=2)
    async with uvicorn_serving(app, http=http) as (url, _server):
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert (response.status, await response.read()) == (200, b"ok")
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.01)
    assert [kind for kind, _ in heard][-1:] == ["http.disconnect"]
    assert heard[-1][1] < 0.1


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_a_body_the_app_refuses_unread_is_never_asked_for(http: str) -> None:
    """`Expect: 100-continue` under uvicorn: an app that refuses an upload after 50 ms of
    checks, without reading it, answers 413 and uvicorn never tells the client to send the
    10 MB body (the disconnect watch, which reads from 5 ms on, made it send `100 Continue`);
    an app that reads the body gets it as usual, `100 Continue` included."""

    async def upload(request: Request) -> Response:
        await asyncio.sleep(0.05)
        if request.url.path == "/refused":
            return Response(status_code=413)
        return Response(f"{len(await request.body())}")

    app = app_with(
        Route("/refused", upload, methods=["POST"]), Route("/taken", upload, methods=["POST"])
    )
    async with uvicorn_serving(app, http=http) as (url, _server):
        port = int(url.rsplit(":", 1)[1])
        head = "POST {} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n"
        refused, _ = await raw_exchange(port, head.format("/refused", 10_000_000).encode(), wait=1)
        assert refused.startswith(b"HTTP/1.1 413"), refused[:80]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.format("/taken", 5).encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        answer = await reader.readuntil(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert (await reader.read(1)) == b"5"
        writer.close()


async def test_a_http_budget_stops_a_slow_grpc_stream_with_a_504() -> None:
    """(a) for a server-streaming gRPC call read through tether's channel: the budget running
    out while the stream is read is answered 504 `deadline-exceeded`, as for a unary call (a
    raw AioRpcError reached the safety net as an unknown failure: 500)."""

    async def slow_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(5)
        yield b"late"

    handlers = {"Stream": grpc.unary_stream_rpc_method_handler(slow_stream)}
    async with grpc_server(handlers) as target, tether.grpc.insecure_channel(target) as channel:

        async def report(request: Request) -> Response:
            parts = [part async for part in channel.unary_stream(method("Stream"))(b"")]
            return Response(b"".join(parts))

        app = app_with(Route("/report", report))
        async with uvicorn_serving(app) as (url, _), aiohttp.ClientSession() as client:
            started = time.perf_counter()
            headers = {"x-request-timeout": "300"}
            async with client.get(url + "/report", headers=headers) as answer:
                took = time.perf_counter() - started
                body = await answer.json()
    assert answer.status == 504
    assert body["type"].endswith("deadline-exceeded")
    assert took < 0.3 + 0.05
