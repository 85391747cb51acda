"""A service as its users write it: a Starlette app behind TetherMiddleware, under uvicorn,
writing to and reading from a real PostgreSQL through each of tether's integrations.

The request's budget and request id reach the database together (a combination the
integrations' own tests met separately: with both, SQLAlchemy over asyncpg once failed every
statement, and psycopg once rolled back every write). A write is committed and tagged with the
request's id; a slow query is answered 504 at the budget and stopped on the server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import tether.postgres
import tether.postgres.psycopg as tpsycopg
import tether.postgres.sqlalchemy as tsqlalchemy

from .pg_helpers import app_name, idle_after
from .servers import LATE, RID, uvicorn_server
from .test_failure_cases import app_with

pytestmark = pytest.mark.integration

SETTING = "SELECT current_setting('application_name')"
# What a route runs: a write that returns the backend's application_name, or a statement.
Write = Callable[[str, int], Awaitable[str]]
Query = Callable[[str], Awaitable[Any]]


@asynccontextmanager
async def database(driver: str, dsn: str, prefix: str) -> AsyncIterator[tuple[Write, Query]]:
    """The route's two operations through `driver`, on a pool of 2."""
    if driver == "asyncpg":
        pool = await tether.postgres.create_pool(
            dsn, min_size=1, max_size=2, application_name=prefix
        )

        async def write(table: str, number: int) -> str:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES ($1)", number)
                return str(await conn.fetchval(SETTING))

        try:
            yield write, pool.fetchval
        finally:
            await pool.close()
    elif driver == "sqlalchemy":
        url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        engine = tsqlalchemy.instrument(
            create_async_engine(url, pool_size=2, max_overflow=0), application_name=prefix
        )
        sessions = async_sessionmaker(engine)

        async def sa_write(table: str, number: int) -> str:
            async with tsqlalchemy.session(sessions) as session, session.begin():
                await session.execute(text(f"INSERT INTO {table} VALUES (:n)"), {"n": number})
                return str((await session.execute(text(SETTING))).scalar())

        async def sa_query(sql: str) -> Any:
            async with tsqlalchemy.session(sessions) as session:
                return (await session.execute(text(sql))).scalar()

        try:
            yield sa_write, sa_query
        finally:
            await engine.dispose()
    else:
        psycopg_pool = await tpsycopg.open_pool(
            dsn, min_size=1, max_size=2, application_name=prefix
        )

        async def pg_write(table: str, number: int) -> str:
            async with psycopg_pool.acquire() as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (%s)", (number,))
                return str(await conn.fetchval(SETTING))

        try:
            yield pg_write, psycopg_pool.fetchval
        finally:
            await psycopg_pool.close()


@pytest.mark.parametrize("driver", ["asyncpg", "sqlalchemy", "psycopg"])
async def test_a_services_writes_and_slow_reads_keep_to_the_request(
    driver: str, pg_dsn: str, monitor: asyncpg.Connection
) -> None:
    prefix = app_name()
    table = f"orders_{prefix}"
    await monitor.execute(f"CREATE TABLE {table} (n int)")
    try:
        async with database(driver, pg_dsn, prefix) as (write, query):

            async def create(request: Request) -> JSONResponse:
                number = int(request.path_params["number"])
                return JSONResponse({"tag": await write(table, number)}, status_code=201)

            async def slow(request: Request) -> JSONResponse:
                return JSONResponse({"slept": await query("SELECT pg_sleep(5)")})

            app = app_with(
                Route("/orders/{number}", create, methods=["POST"]), Route("/slow", slow)
            )
            async with uvicorn_server(app) as url, aiohttp.ClientSession() as client:
                headers = {"X-Request-ID": RID, "X-Request-Timeout": "2000"}
                async with client.post(f"{url}/orders/7", headers=headers) as created:
                    assert created.status == 201, await created.text()
                    assert (await created.json())["tag"] == f"{prefix} {RID}"
                assert await monitor.fetchval(f"SELECT count(*) FROM {table} WHERE n = 7") == 1

                started = time.perf_counter()
                headers["X-Request-Timeout"] = "300"
                async with client.get(f"{url}/slow", headers=headers) as answered:
                    took = time.perf_counter() - started
                    assert answered.status == 504, await answered.text()
                assert 0.29 <= took < 0.3 + LATE
                stopped = await idle_after(monitor, prefix, limit=2.0)
                assert stopped - started < 0.3 + LATE
    finally:
        await monitor.execute(f"DROP TABLE {table}")
