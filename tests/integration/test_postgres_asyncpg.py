"""tether.postgres (asyncpg) against a real PostgreSQL: the server really stops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import asyncpg
import pytest

import tether.postgres
from tether import DeadlineExceeded, UpstreamTimeout, UpstreamUnavailable, deadline_after
from tether.postgres import PoolClosed, PoolExhausted
from tether.request_id import request_id_scope

from .pg_helpers import (
    active_backends,
    all_backends,
    app_name,
    check_commits_are_bounded_and_translated,
    idle_after,
    wait_active,
)
from .servers import LATE

pytestmark = pytest.mark.integration


async def pool_for(pg_dsn: str, prefix: str, size: int = 5) -> tether.postgres.Pool:
    return await tether.postgres.create_pool(
        pg_dsn,
        min_size=1,
        max_size=size,
        application_name=prefix,
        server_settings={"application_name": prefix},
    )


@pytest.mark.parametrize("mode", ["bare", "transaction", "pool"])
async def test_sleep_10s_under_200ms_budget_stops_on_the_server(
    pg_dsn: str, monitor: asyncpg.Connection, mode: str
) -> None:
    """pg_sleep(10) under a 200 ms budget: DeadlineExceeded at 200 ms (+30 ms); the backend is
    no longer active within 50 ms of the deadline; the connection is reusable at once."""
    prefix = app_name()
    pool = await pool_for(pg_dsn, prefix)
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            async with deadline_after(0.2):
                if mode == "pool":
                    await pool.fetchval("SELECT pg_sleep(10)")
                else:
                    async with pool.acquire() as conn:
                        if mode == "transaction":
                            async with conn.transaction():
                                await conn.fetchval("SELECT pg_sleep(10)")
                        else:
                            await conn.fetchval("SELECT pg_sleep(10)")
        raised = time.perf_counter()
        idle = await idle_after(monitor, prefix)
        assert await pool.fetchval("SELECT 41 + 1") == 42
    finally:
        await pool.close()
    deadline = start + 0.2
    assert 0.19 <= raised - start <= 0.23, f"raised after {raised - start:.3f} s"
    assert idle - deadline <= 0.05, f"backend idle {idle - deadline:.3f} s after the deadline"


async def test_500_cancelled_queries_leave_a_healthy_pool(
    pg_dsn: str, monitor: asyncpg.Connection
) -> None:
    """500 cancelled queries through a pool of 5: then a query takes < 5 ms, the same 5
    backends serve the pool (connections were reused, not replaced), and none is active."""
    prefix = app_name()
    pool = await tether.postgres.create_pool(
        pg_dsn,
        min_size=5,
        max_size=5,
        application_name=prefix,
        server_settings={"application_name": prefix},
    )
    pids_before = await backend_pids(monitor, prefix)
    cancelled = 0

    async def one() -> None:
        nonlocal cancelled
        try:
            async with deadline_after(0.01):
                await pool.fetchval("SELECT pg_sleep(1)")
        except DeadlineExceeded:
            cancelled += 1

    try:
        for _ in range(100):
            await asyncio.gather(*(one() for _ in range(5)))
        await idle_after(monitor, prefix)
        start = time.perf_counter()
        assert await pool.fetchval("SELECT 1") == 1
        took = time.perf_counter() - start
        backends = await all_backends(monitor, prefix)
        active = await active_backends(monitor, prefix)
        pids_after = await backend_pids(monitor, prefix)
    finally:
        await pool.close()
    assert cancelled == 500
    assert took < 0.005, f"a query took {took * 1000:.1f} ms after the churn"
    assert backends <= 5
    assert active == 0
    assert len(pids_before) == 5
    assert pids_after == pids_before


async def backend_pids(monitor: asyncpg.Connection, prefix: str) -> set[int]:
    rows = await monitor.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 || '%'", prefix
    )
    return {row["pid"] for row in rows}


async def test_server_backstop_ends_the_statement_after_the_client_is_killed(
    pg_dsn: str, monitor: asyncpg.Connection, tmp_path: object
) -> None:
    """SIGKILL the client in the middle of a transaction's long statement: the server still
    ends the statement when the budget runs out (SET LOCAL statement_timeout)."""
    prefix = app_name()
    script = (
        "import asyncio, sys, tether, tether.postgres\n"
        "async def main():\n"
        f"    pool = await tether.postgres.create_pool(sys.argv[1], application_name='{prefix}',"
        f" server_settings={{'application_name': '{prefix}'}}, min_size=1, max_size=1)\n"
        "    async with tether.deadline_after(1.0):\n"
        "        async with pool.acquire() as conn, conn.transaction():\n"
        "            print('started', flush=True)\n"
        "            await conn.fetchval('SELECT pg_sleep(30)')\n"
        "asyncio.run(main())\n"
    )
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, pg_dsn, stdout=asyncio.subprocess.PIPE
    )
    assert client.stdout is not None
    started = await asyncio.wait_for(client.stdout.readline(), 10)
    assert started.strip() == b"started"
    budget_start = time.perf_counter()  # the budget began just before this line was printed
    await wait_active(monitor, prefix)
    await asyncio.sleep(0.2)
    os.kill(client.pid, signal.SIGKILL)
    await client.wait()
    killed = time.perf_counter()
    assert await active_backends(monitor, prefix) == 1  # still running on the server
    idle = await idle_after(monitor, prefix, limit=5)
    assert killed - budget_start < 0.5
    assert idle - budget_start <= 1.0 + 0.2, f"ended {idle - budget_start:.3f} s after start"


async def test_exhausted_pool_gives_pool_exhausted_at_the_budget(
    pg_dsn: str, monitor: asyncpg.Connection
) -> None:
    """Two slow holders take the whole pool; a caller with 100 ms gets PoolExhausted at
    about 100 ms, not a hang."""
    prefix = app_name()
    pool = await pool_for(pg_dsn, prefix, size=2)
    try:
        holders = [asyncio.create_task(pool.fetchval("SELECT pg_sleep(1)")) for _ in range(2)]
        await wait_active(monitor, prefix, count=2)
        start = time.perf_counter()
        with pytest.raises(PoolExhausted, match="pool is exhausted"):
            async with deadline_after(0.1):
                await pool.fetchval("SELECT 1")
        waited = time.perf_counter() - start
        await asyncio.gather(*holders)
    finally:
        await pool.close()
    assert 0.09 <= waited <= 0.13


async def test_request_id_is_visible_in_pg_stat_activity(
    pg_dsn: str, monitor: asyncpg.Connection
) -> None:
    """A DBA sees `<prefix> <request id>` as application_name of the running statement."""
    prefix = app_name()
    pool = await pool_for(pg_dsn, prefix)
    try:
        with request_id_scope("req-pg-1"):
            task = asyncio.create_task(pool.fetchval("SELECT pg_sleep(0.3)"))
            await wait_active(monitor, prefix)
            names = await monitor.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE state = 'active' "
                "AND application_name LIKE $1 || '%'",
                prefix,
            )
            await task
    finally:
        await pool.close()
    assert [r["application_name"] for r in names] == [f"{prefix} req-pg-1"]


async def test_a_dbas_statement_timeout_is_an_upstream_timeout(pg_dsn: str) -> None:
    """57014 from the server's own statement_timeout is UpstreamTimeout, not our deadline."""
    pool = await pool_for(pg_dsn, app_name())
    try:
        async with deadline_after(5), pool.acquire() as conn:
            await conn.raw.execute("SET statement_timeout = 50")
            with pytest.raises(UpstreamTimeout, match="on its own"):
                await conn.fetchval("SELECT pg_sleep(2)")
            await conn.raw.execute("RESET statement_timeout")
    finally:
        await pool.close()


async def test_no_checkout_and_no_statement_without_budget(pg_dsn: str) -> None:
    """A spent budget takes no connection; zero and negative budgets fail at once."""
    pool = await tether.postgres.create_pool(pg_dsn, min_size=1, max_size=1, margin=0.1)
    try:
        for budget in (0, -1):
            with pytest.raises(DeadlineExceeded):
                async with deadline_after(budget):
                    await pool.fetchval("SELECT 1")
        async with deadline_after(0.3):
            await asyncio.sleep(0.21)  # 90 ms left: less than the 100 ms margin
            with pytest.raises(DeadlineExceeded):
                async with pool.acquire():
                    pass
        assert await pool.fetchval("SELECT 1") == 1
        assert pool.raw.get_idle_size() == 1
    finally:
        await pool.close()


async def test_bad_dsn_unreachable_server_and_closed_pool(pg_dsn: str) -> None:
    """A malformed DSN is ValueError, an unreachable server UpstreamUnavailable, a closed pool
    PoolClosed."""
    with pytest.raises(ValueError, match="DSN"):
        await tether.postgres.create_pool("postgresql://u@h:notaport/db")
    with pytest.raises(UpstreamUnavailable):
        async with deadline_after(3):
            await tether.postgres.create_pool("postgresql://postgres@127.0.0.1:1/postgres")
    pool = await pool_for(pg_dsn, app_name())
    await pool.close()
    with pytest.raises(PoolClosed):
        await pool.fetchval("SELECT 1")


async def test_cancelled_while_waiting_for_a_connection_leaks_nothing(pg_dsn: str) -> None:
    """A caller cancelled while queued for a connection leaves the pool at full capacity."""
    pool = await pool_for(pg_dsn, app_name(), size=1)
    try:
        holder = asyncio.create_task(pool.fetchval("SELECT pg_sleep(0.3)"))
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(pool.fetchval("SELECT 1"))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await holder
        async with deadline_after(1):
            assert await pool.fetchval("SELECT 2") == 2
        assert pool.raw.get_idle_size() == 1
    finally:
        await pool.close()


async def test_a_task_that_only_inherited_the_deadline_is_still_bounded(
    pg_dsn: str, monitor: asyncpg.Connection
) -> None:
    """A plain child task knows the deadline but is not cancelled at it: its statements get the
    budget as their timeout instead, and still stop on the server."""
    prefix = app_name()
    pool = await pool_for(pg_dsn, prefix)
    try:
        async with deadline_after(0.2):
            child = asyncio.create_task(pool.fetchval("SELECT pg_sleep(10)"))
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="cancelled on the server"):
            await child
        raised = time.perf_counter()
        await idle_after(monitor, prefix)
    finally:
        await pool.close()
    assert raised - start <= 0.25


async def test_a_commit_is_bounded_by_the_budget_and_its_failures_translated(
    pg_dsn: str, monitor: asyncpg.Connection, slow_commit_table: str
) -> None:
    """A COMMIT that takes a second (a deferred trigger; PostgreSQL's statement_timeout
    backstop does not reach it). In a task that only inherited its 300 ms deadline (no
    cancellation reaches it), the COMMIT ran the whole second; now it is cut at the budget:
    DeadlineExceeded, nothing written. Cancelled by someone else (pg_cancel_backend) while the
    budget lasts, it is UpstreamTimeout, not asyncpg's QueryCanceledError."""
    prefix = app_name()
    pool = await pool_for(pg_dsn, prefix, size=1)

    async def write(number: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"INSERT INTO {slow_commit_table} VALUES ({number})")

    try:
        await check_commits_are_bounded_and_translated(write, monitor, prefix, LATE)
        assert await pool.fetchval("SELECT 1") == 1  # the connection still serves
    finally:
        await pool.close()
    assert await monitor.fetchval(f"SELECT count(*) FROM {slow_commit_table}") == 0
