"""SQLAlchemy 2 asyncio and psycopg 3 under tether, against a real PostgreSQL.

Each driver gets the same checks as asyncpg (test_postgres_asyncpg.py): the statement stops on
the server at the budget (bare, in a transaction, through the pool), 500 cancellations leave a
healthy pool, pool exhaustion is reported at the budget, a DBA's statement_timeout is told
apart, and the server-side backstop outlives a killed client. Then the two cancellation styles:
tether's (asyncio) and anyio's cancel scopes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import tether.postgres.psycopg as tpsycopg
import tether.postgres.sqlalchemy as tsqlalchemy
from tether import DeadlineExceeded, UpstreamTimeout, deadline_after
from tether.postgres import PoolExhausted
from tether.request_id import request_id_scope

from .pg_helpers import (
    active_backends,
    all_backends,
    app_name,
    check_commits_are_bounded_and_translated,
    idle_after,
    sqlalchemy_engine,
    wait_active,
)
from .servers import LATE

pytestmark = pytest.mark.integration
SLEEP = "SELECT pg_sleep(10)"


class Driver(Protocol):
    name: str

    async def open(self, dsn: str, prefix: str, size: int) -> None: ...
    async def run(self, sql: str, mode: str) -> Any: ...
    async def run_raw_then(self, setup: str, sql: str) -> Any: ...
    async def close(self) -> None: ...


class SQLAlchemyDriver:
    name = "sqlalchemy"

    async def open(self, dsn: str, prefix: str, size: int) -> None:
        self.engine = sqlalchemy_engine(dsn, prefix, size)
        self.maker = async_sessionmaker(self.engine)

    async def run(self, sql: str, mode: str) -> Any:
        if mode == "pool":
            async with tsqlalchemy.session(self.maker) as session:
                return (await session.execute(text(sql))).scalar()
        async with tsqlalchemy.connect(self.engine) as conn:
            if mode == "transaction":
                async with conn.begin():
                    return (await conn.execute(text(sql))).scalar()
            return (await conn.execute(text(sql))).scalar()

    async def run_raw_then(self, setup: str, sql: str) -> Any:
        async with tsqlalchemy.connect(self.engine) as conn:
            await conn.exec_driver_sql(setup)
            return (await conn.execute(text(sql))).scalar()

    async def close(self) -> None:
        await self.engine.dispose()


class PsycopgDriver:
    name = "psycopg"

    async def open(self, dsn: str, prefix: str, size: int) -> None:
        self.pool = await tpsycopg.open_pool(
            dsn,
            min_size=1,
            max_size=size,
            application_name=prefix,
            kwargs={"application_name": prefix},
        )

    async def run(self, sql: str, mode: str) -> Any:
        if mode == "pool":
            return await self.pool.fetchval(sql)
        async with self.pool.acquire() as conn:
            if mode == "transaction":
                async with conn.transaction():
                    return await conn.fetchval(sql)
            return await conn.fetchval(sql)

    async def run_raw_then(self, setup: str, sql: str) -> Any:
        async with self.pool.acquire() as conn:
            await conn.execute(setup)
            return await conn.fetchval(sql)

    async def close(self) -> None:
        await self.pool.close()


@pytest.fixture(params=["sqlalchemy", "psycopg"])
async def driver(request: pytest.FixtureRequest, pg_dsn: str) -> AsyncIterator[Driver]:
    chosen: Driver = SQLAlchemyDriver() if request.param == "sqlalchemy" else PsycopgDriver()
    driver_prefix = app_name()
    await chosen.open(pg_dsn, driver_prefix, size=5)
    chosen.prefix = driver_prefix  # type: ignore[attr-defined]
    yield chosen
    await chosen.close()


@pytest.mark.parametrize("mode", ["bare", "transaction", "pool"])
async def test_sleep_under_200ms_budget_stops_on_the_server(
    driver: Driver, monitor: asyncpg.Connection, mode: str
) -> None:
    """DeadlineExceeded at 200 ms (+30 ms); the backend idle within 50 ms of the deadline."""
    prefix = driver.prefix  # type: ignore[attr-defined]
    assert await driver.run("SELECT 1", "bare") == 1
    start = time.perf_counter()
    with pytest.raises(DeadlineExceeded):
        async with deadline_after(0.2):
            await driver.run(SLEEP, mode)
    raised = time.perf_counter()
    idle = await idle_after(monitor, prefix)
    assert await driver.run("SELECT 42", "bare") == 42
    assert 0.19 <= raised - start <= 0.23, f"{driver.name}: raised after {raised - start:.3f} s"
    assert idle - (start + 0.2) <= 0.05, f"{driver.name}: idle {idle - start - 0.2:.3f} s late"


async def test_500_cancelled_queries_leave_a_healthy_pool(
    driver: Driver, monitor: asyncpg.Connection
) -> None:
    """500 cancelled queries through a pool of 5: then a query is fast, at most 5 backends
    exist for the pool, none active."""
    prefix = driver.prefix  # type: ignore[attr-defined]
    cancelled = 0

    async def one() -> None:
        nonlocal cancelled
        try:
            async with deadline_after(0.015):
                await driver.run("SELECT pg_sleep(1)", "pool")
        except DeadlineExceeded:
            cancelled += 1

    for _ in range(100):
        await asyncio.gather(*(one() for _ in range(5)))
    await idle_after(monitor, prefix)
    await driver.run("SELECT 1", "pool")  # the first query may open a replacement connection
    timings = []
    for _ in range(5):  # the best of five: one scheduling hiccup on a busy machine is not a bug
        start = time.perf_counter()
        assert await driver.run("SELECT 1", "pool") == 1
        timings.append(time.perf_counter() - start)
    took = min(timings)
    assert cancelled == 500
    assert took < 0.005, f"{driver.name}: a query took {took * 1000:.1f} ms after the churn"
    assert await all_backends(monitor, prefix) <= 5
    assert await active_backends(monitor, prefix) == 0


async def test_exhausted_pool_is_reported_at_the_budget(
    driver: Driver, monitor: asyncpg.Connection
) -> None:
    """Five slow holders fill the pool; a caller with 100 ms gets PoolExhausted at ~100 ms."""
    holders = [asyncio.create_task(driver.run("SELECT pg_sleep(1)", "pool")) for _ in range(5)]
    # all five must be running before the caller asks: on a cold machine, opening the pool's
    # connections can take longer than any fixed pause
    await wait_active(monitor, driver.prefix, count=5)  # type: ignore[attr-defined]
    start = time.perf_counter()
    with pytest.raises(PoolExhausted):
        async with deadline_after(0.1):
            await driver.run("SELECT 1", "pool")
    waited = time.perf_counter() - start
    await asyncio.gather(*holders)
    assert 0.09 <= waited <= 0.13, f"{driver.name}: waited {waited:.3f} s"


async def test_a_dbas_statement_timeout_is_an_upstream_timeout(driver: Driver) -> None:
    """A server-side statement_timeout (not tether's) is UpstreamTimeout."""
    with pytest.raises(UpstreamTimeout):
        async with deadline_after(5):
            await driver.run_raw_then("SET statement_timeout = 50", "SELECT pg_sleep(2)")


@pytest.mark.parametrize("name", ["sqlalchemy", "psycopg"])
async def test_backstop_outlives_a_killed_client(
    name: str, pg_dsn: str, monitor: asyncpg.Connection
) -> None:
    """SIGKILL mid-transaction: the server ends the statement at the budget anyway."""
    prefix = app_name()
    script = (
        "import asyncio, sys, tether\n"
        "sys.path.insert(0, sys.argv[2])\n"
        f"from integration.test_postgres_drivers import {'SQLAlchemyDriver' if name == 'sqlalchemy' else 'PsycopgDriver'} as D\n"  # noqa: E501
        "async def main():\n"
        "    d = D()\n"
        f"    await d.open(sys.argv[1], '{prefix}', 1)\n"
        "    async with tether.deadline_after(1.0):\n"
        "        print('started', flush=True)\n"
        "        await d.run('SELECT pg_sleep(30)', 'transaction')\n"
        "asyncio.run(main())\n"
    )
    tests_dir = os.path.dirname(os.path.dirname(__file__))
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, pg_dsn, tests_dir, stdout=asyncio.subprocess.PIPE
    )
    assert client.stdout is not None
    assert (await asyncio.wait_for(client.stdout.readline(), 20)).strip() == b"started"
    started = time.perf_counter()
    await wait_active(monitor, prefix)
    await asyncio.sleep(0.2)
    os.kill(client.pid, signal.SIGKILL)
    await client.wait()
    assert await active_backends(monitor, prefix) == 1
    idle = await idle_after(monitor, prefix)
    assert idle - started <= 1.2, f"{name}: ended {idle - started:.3f} s after the start"


@pytest.mark.parametrize("style", ["tether", "anyio"])
@pytest.mark.parametrize("name", ["asyncpg", "sqlalchemy", "psycopg"])
async def test_cancellation_styles(
    name: str, style: str, pg_dsn: str, monitor: asyncpg.Connection, record_property: Any
) -> None:
    """tether's deadline (asyncio cancellation) stops the query on the server with every
    driver. An anyio cancel scope around the same work is recorded, not required: see
    docs/postgres.md for what it does per driver."""
    prefix = app_name()
    if name == "asyncpg":
        import tether.postgres

        pool = await tether.postgres.create_pool(
            pg_dsn,
            min_size=1,
            max_size=1,
            application_name=prefix,
            server_settings={"application_name": prefix},
        )

        async def work() -> None:
            async with pool.acquire() as conn:
                await conn.raw.fetchval("SELECT pg_sleep(5)")  # no per-statement timeout

        close = pool.close
    else:
        driver: Driver = SQLAlchemyDriver() if name == "sqlalchemy" else PsycopgDriver()
        await driver.open(pg_dsn, prefix, 1)

        async def work() -> None:
            await driver.run("SELECT pg_sleep(5)", "pool")

        close = driver.close
    try:
        start = time.perf_counter()
        if style == "tether":
            with pytest.raises(DeadlineExceeded):
                async with deadline_after(0.2):
                    await work()
        else:
            with anyio.move_on_after(0.2):
                await work()
        deadline = start + 0.2
        try:
            idle = await idle_after(monitor, prefix, limit=1.5)
            stopped_after: float | None = idle - deadline
        except AssertionError:
            stopped_after = None  # still running on the server 1.5 s later
        record_property(f"{name}-{style}", stopped_after)
        outcome = (
            "never (within 1.5 s)" if stopped_after is None else (f"{stopped_after * 1000:.0f} ms")
        )
        print(f"{name} under {style}: backend stopped {outcome} after the deadline")
    finally:
        await close()
    if style == "tether":
        assert stopped_after is not None
        assert stopped_after <= 0.05


async def test_zero_and_negative_budgets_fail_at_once(driver: Driver) -> None:
    """No statement runs without budget, with any driver."""
    for budget in (0, -1):
        with pytest.raises(DeadlineExceeded):
            async with deadline_after(budget):
                await driver.run("SELECT 1", "pool")
    assert await driver.run("SELECT 1", "pool") == 1


async def test_cancelled_while_waiting_for_a_connection_leaks_nothing(driver: Driver) -> None:
    """A caller cancelled while queued for a connection leaves the pool fully usable."""
    holders = [asyncio.create_task(driver.run("SELECT pg_sleep(0.3)", "pool")) for _ in range(5)]
    await asyncio.sleep(0.1)
    waiter = asyncio.create_task(driver.run("SELECT 1", "pool"))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.gather(*holders)
    results = await asyncio.gather(*(driver.run("SELECT 1", "pool") for _ in range(5)))
    assert results == [1] * 5


async def test_psycopg_bad_dsn_unreachable_and_closed_pool(pg_dsn: str) -> None:
    """psycopg: malformed DSN is ValueError, unreachable is UpstreamUnavailable, a closed pool
    is refused."""
    from tether import TetherError, UpstreamUnavailable

    with pytest.raises(ValueError, match="DSN"):
        await tpsycopg.open_pool("host=x port=notaport dbname=")
    with pytest.raises(UpstreamUnavailable):
        async with deadline_after(1):
            await tpsycopg.open_pool("postgresql://postgres@127.0.0.1:1/x", min_size=1)
    pool = await tpsycopg.open_pool(pg_dsn, min_size=1, max_size=1)
    await pool.close()
    with pytest.raises(TetherError, match="closed"):
        await pool.fetchval("SELECT 1")


async def test_sqlalchemy_unreachable_server_is_upstream_unavailable() -> None:
    """SQLAlchemy: a server that refuses connections is UpstreamUnavailable, within budget."""
    from tether import UpstreamUnavailable

    engine = tsqlalchemy.instrument(
        create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/x")
    )
    try:
        with pytest.raises(UpstreamUnavailable):
            async with deadline_after(2), tsqlalchemy.connect(engine) as conn:
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


async def test_sqlalchemy_a_requests_tag_ends_with_its_transaction(pg_dsn: str) -> None:
    """The tag the begin hook sets is the transaction's alone: after a committed transaction
    of a request, the same pooled connection's later work without a request id does not run
    under that request's id."""
    prefix = app_name()
    url = pg_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = tsqlalchemy.instrument(
        create_async_engine(url, pool_size=1, max_overflow=0), application_name=prefix
    )
    setting = text("SELECT current_setting('application_name')")
    try:
        async with tsqlalchemy.connect(engine) as conn:
            own = (await conn.execute(setting)).scalar()
        with request_id_scope("req-committed"):
            async with tsqlalchemy.connect(engine) as conn:
                assert (await conn.execute(setting)).scalar() == f"{prefix} req-committed"
                await conn.commit()
        async with tsqlalchemy.connect(engine) as conn:
            assert (await conn.execute(setting)).scalar() == own
    finally:
        await engine.dispose()


async def test_sqlalchemy_a_commit_is_bounded_by_the_budget_and_its_failures_translated(
    pg_dsn: str, monitor: asyncpg.Connection, slow_commit_table: str
) -> None:
    """As for asyncpg and psycopg: a COMMIT that takes a second (a deferred trigger), in a
    task that only inherited its 300 ms deadline, ends at the budget (it ran the whole second:
    SQLAlchemy's commit is its own call, and the server's backstop does not reach it); one
    cancelled from outside is UpstreamTimeout. Nothing is written."""
    prefix = app_name()
    engine = sqlalchemy_engine(pg_dsn, prefix, 1)

    async def write(number: int) -> None:
        async with tsqlalchemy.connect(engine) as conn, conn.begin():
            await conn.execute(text(f"INSERT INTO {slow_commit_table} VALUES ({number})"))

    try:
        await check_commits_are_bounded_and_translated(write, monitor, prefix, LATE)
    finally:
        await engine.dispose()
    assert await monitor.fetchval(f"SELECT count(*) FROM {slow_commit_table}") == 0
