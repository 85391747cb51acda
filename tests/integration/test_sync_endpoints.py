"""Synchronous (`def`) endpoints behind TetherMiddleware, under real uvicorn: the work in the
worker thread knows the request's budget and, with tether's sync pieces, stops with it.

Starlette (and FastAPI) run a `def` endpoint in a worker thread, in a copy of the request's
context. At the deadline the client gets its 504, but no cancellation reaches the thread: only
work that checks the budget (`check_deadline()`), or whose I/O is bounded by it
(`TetherSyncTransport`, an instrumented synchronous SQLAlchemy engine), ends with it.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
import asyncpg
import grpc
import httpx
import pytest
import sqlalchemy
from sqlalchemy import create_engine, text
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tether.grpc
import tether.postgres.sqlalchemy as tsqlalchemy
from tether import (
    DeadlineExceeded,
    check_deadline,
    current_request_id,
    deadline_after,
    time_remaining,
)
from tether.http.httpx_transport import TetherSyncTransport

from .grpc_services import grpc_server, method
from .pg_helpers import app_name, idle_after, wait_active
from .servers import LATE, echo_headers_app, uvicorn_server, wait_until
from .test_failure_cases import app_with

pytestmark = pytest.mark.integration

BUDGET = {"X-Request-Timeout": "300"}


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, float]:
    """GET `url`: the status, the JSON body and the seconds it took."""
    async with aiohttp.ClientSession() as client:
        start = time.perf_counter()
        async with client.get(url, headers=headers) as answer:
            body = await answer.json(content_type=None)
            return answer.status, body, time.perf_counter() - start


async def test_a_def_endpoint_that_checks_the_deadline_stops_with_it() -> None:
    """1 s of 10 ms batches under a 300 ms budget: both clients get their 504 at 300 ms; the
    thread that calls `check_deadline()` ends with the budget, the other runs its whole second
    after its client was answered."""
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    raised: dict[str, BaseException] = {}

    def batches(request: Request) -> JSONResponse:  # a def endpoint: a worker thread
        name = request.path_params["name"]
        started[name] = time.perf_counter()
        try:
            for _ in range(100):
                if name == "checked":
                    check_deadline()
                time.sleep(0.01)
            return JSONResponse({"done": True})
        except BaseException as exc:
            raised[name] = exc
            raise
        finally:
            ended[name] = time.perf_counter()

    app = app_with(Route("/{name}", batches))
    async with uvicorn_server(app, http="httptools") as url:
        for name in ("checked", "unchecked"):
            status, problem, took = await _get(f"{url}/{name}", BUDGET)
            assert status == 504, problem
            assert problem["type"].endswith("deadline-exceeded")
            assert 0.29 <= took < 0.3 + LATE
        await wait_until(lambda: ended, lambda ended: "unchecked" in ended, 3)
    assert isinstance(raised["checked"], DeadlineExceeded)
    assert 0.29 - LATE <= ended["checked"] - started["checked"] < 0.3 + LATE
    assert "unchecked" not in raised
    assert ended["unchecked"] - started["unchecked"] >= 0.99


async def test_a_def_endpoint_passes_its_budget_on_over_httpx() -> None:
    """`httpx.Client` with `TetherSyncTransport` in a def endpoint: the upstream gets the
    request's id and what is left of its budget; a slow upstream ends the call (and the
    thread) at the budget minus the margin, and the client gets the 504 then."""
    ended: list[float] = []

    def call(request: Request) -> JSONResponse:
        upstream = request.query_params["upstream"]
        try:
            with httpx.Client(transport=TetherSyncTransport(margin=0.05)) as client:
                seen = client.get(upstream).json()
            return JSONResponse({"upstream_saw": seen, "request_id": current_request_id()})
        finally:
            ended.append(time.perf_counter())

    app = app_with(Route("/", call))
    async with (
        uvicorn_server(echo_headers_app()) as fast,
        uvicorn_server(echo_headers_app(delay=3)) as slow,
        uvicorn_server(app, http="httptools") as url,
    ):
        status, body, took = await _get(f"{url}/?upstream={fast}/", BUDGET)
        assert status == 200, body
        assert body["upstream_saw"]["x-request-id"] == body["request_id"]
        # 300 ms less the 50 ms margin less what passed before the call (less than `took`)
        assert 250 - took * 1000 - 1 <= int(body["upstream_saw"]["x-request-timeout"]) <= 250

        started = time.perf_counter()
        status, problem, took = await _get(f"{url}/?upstream={slow}/", BUDGET)
        assert status == 504, problem
        assert problem["type"].endswith("deadline-exceeded")
        assert 0.24 <= took < 0.3 + LATE
        await wait_until(lambda: ended, lambda ended: len(ended) == 2, 3)
        assert ended[1] - started < 0.25 + LATE


async def test_a_def_endpoint_passes_its_budget_on_over_grpc() -> None:
    """A def endpoint calling a grpc.aio service through `tether.grpc.SyncChannel`: the service
    sees the request's id and what is left of its budget. A handler that takes 5 s is
    cancelled when the call's timeout (the budget less the margin and grpc's 3%) passes, when
    the endpoint's thread gets DeadlineExceeded and ends; the client gets its 504 then, just
    before the request's deadline."""
    cancelled: list[float] = []
    ended: list[float] = []
    raised: list[BaseException] = []

    async def report(request: bytes, context: Any) -> bytes:
        return f"{time_remaining():.3f} {current_request_id()}".encode()

    async def slow(request: bytes, context: Any) -> bytes:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(time.perf_counter())
            raise
        return b""

    handlers = {
        "Report": grpc.unary_unary_rpc_method_handler(report),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    async with grpc_server(handlers) as target:
        channel = tether.grpc.sync_insecure_channel(target)

        def call(request: Request) -> JSONResponse:
            try:
                answer = channel.unary_unary(method(request.path_params["name"]))(b"")
                left, request_id = answer.decode().split()
                return JSONResponse({"left": float(left), "request_id": request_id})
            except BaseException as exc:
                raised.append(exc)
                raise
            finally:
                ended.append(time.perf_counter())

        app = app_with(Route("/{name}", call))
        try:
            async with uvicorn_server(app, http="httptools") as url:
                status, body, took = await _get(
                    f"{url}/Report", {**BUDGET, "X-Request-ID": "req-def-grpc"}
                )
                assert status == 200, body
                assert body["request_id"] == "req-def-grpc"
                # 97% (grpc's rounding) of 300 ms less the 5 ms margin and what passed before
                # the call (less than `took`). grpc sends that timeout rounded up to whole
                # milliseconds (287 for 286.15: see timeout_for_grpc), and the service prints
                # what is left rounded to the millisecond.
                most = math.ceil(0.295 * 0.97 * 1000) / 1000 + 0.0005
                assert (0.295 - took) * 0.97 - 0.001 <= body["left"] <= most

                started = time.perf_counter()
                status, problem, took = await _get(f"{url}/Slow", BUDGET)
                assert status == 504, problem
                assert problem["type"].endswith("deadline-exceeded")
                assert 0.27 <= took < 0.3 + LATE
                await wait_until(lambda: ended, lambda ended: len(ended) == 2, 3)
        finally:
            channel.close()
    deadline = started + 0.3
    assert cancelled[0] - deadline < LATE
    assert ended[1] - deadline < LATE
    assert isinstance(raised[0], DeadlineExceeded)


async def test_a_def_endpoints_query_stops_on_the_server(
    pg_dsn: str, monitor: asyncpg.Connection
) -> None:
    """A synchronous SQLAlchemy engine (psycopg) instrumented by tether, in a def endpoint:
    `pg_sleep(5)` under a 300 ms budget. The client gets its 504 at 300 ms; PostgreSQL itself
    stops the statement at the budget, so the backend is idle and the thread has ended within
    50 ms of the deadline."""
    prefix = app_name()
    engine = tsqlalchemy.instrument(
        create_engine(dsn_for_psycopg(pg_dsn), pool_size=2, max_overflow=0),
        application_name=prefix,
    )
    ended: list[float] = []
    raised: list[BaseException] = []

    def slow_query(request: Request) -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(5)"))
            return JSONResponse({"done": True})
        except BaseException as exc:
            raised.append(exc)
            raise
        finally:
            ended.append(time.perf_counter())

    app = app_with(Route("/", slow_query))
    try:
        async with uvicorn_server(app, http="httptools") as url:
            started = time.perf_counter()
            answer = asyncio.create_task(_get(url + "/", BUDGET))
            await wait_active(monitor, prefix)
            idle = await idle_after(monitor, prefix)
            status, problem, took = await answer
            await wait_until(lambda: ended, bool, 3)
    finally:
        await asyncio.to_thread(engine.dispose)
    assert status == 504, problem
    assert 0.29 <= took < 0.3 + LATE
    deadline = started + 0.3
    assert idle - deadline < LATE
    assert ended[0] - deadline < LATE
    assert isinstance(raised[0], sqlalchemy.exc.OperationalError)
    assert "canceling statement due to statement timeout" in str(raised[0])


def dsn_for_psycopg(dsn: str) -> str:
    """The test server's DSN as a SQLAlchemy URL for the synchronous psycopg driver."""
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


SETTING_IN_MS = "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'"


def test_instrument_refuses_what_is_not_an_engine_and_bad_margins() -> None:
    """`instrument()` takes an Engine or AsyncEngine (a URL or a connection is refused, naming
    what it got) and a margin of zero or more seconds."""
    with pytest.raises(TypeError, match="Engine or AsyncEngine, got 'postgresql://x'"):
        tsqlalchemy.instrument("postgresql://x")  # type: ignore[type-var]
    engine = create_engine("postgresql+psycopg://127.0.0.1:1/none")  # connects on first use
    for margin in (-0.1, float("nan"), "1s"):
        with pytest.raises((ValueError, TypeError), match="margin"):
            tsqlalchemy.instrument(engine, margin=margin)  # type: ignore[arg-type]


async def test_a_sync_engine_outside_a_request_sets_no_statement_timeout(pg_dsn: str) -> None:
    """Without a deadline in the context, an instrumented synchronous engine leaves the
    server's statement_timeout alone; with one (a thread started under a deadline), its
    transactions get the remaining budget."""
    engine = tsqlalchemy.instrument(create_engine(dsn_for_psycopg(pg_dsn), pool_size=1))

    def statement_timeout() -> str:
        with engine.connect() as conn:
            return str(conn.execute(text(SETTING_IN_MS)).scalar())

    try:
        assert await asyncio.to_thread(statement_timeout) == "0"
        async with deadline_after(2):
            limit = await asyncio.to_thread(statement_timeout)
    finally:
        await asyncio.to_thread(engine.dispose)
    assert 1900 <= int(limit) <= 2000, limit
