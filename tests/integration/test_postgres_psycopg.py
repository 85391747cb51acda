"""tether's psycopg pool keeps psycopg's transaction rules, against a real PostgreSQL.

What a checkout leaves open is committed when its block ends normally and rolled back when it
raises, as psycopg_pool's own `connection()` does; `transaction()` is a real transaction,
durable at its end; the request's tag never opens a transaction of its own (it once did, which
made every write of a request with a request id a savepoint that the pool then rolled back).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext

import asyncpg
import pytest

import tether.postgres.psycopg as tpsycopg
from tether import DeadlineExceeded, deadline_after
from tether.request_id import request_id_scope

from .pg_helpers import app_name, check_commits_are_bounded_and_translated
from .servers import LATE

pytestmark = pytest.mark.integration


async def rows(monitor: asyncpg.Connection, table: str, n: int) -> int:
    """How many rows with `n` another connection sees (committed ones only)."""
    count: int = await monitor.fetchval(f"SELECT count(*) FROM {table} WHERE n = $1", n)
    return count


def maybe_request_id(request_id: str | None) -> AbstractContextManager[object]:
    return nullcontext() if request_id is None else request_id_scope(request_id)


@pytest.mark.parametrize("autocommit", [False, True])
@pytest.mark.parametrize("request_id", [None, "req-writes"])
async def test_writes_last_as_with_psycopg_pools_own_connections(
    pg_dsn: str,
    monitor: asyncpg.Connection,
    table: str,
    request_id: str | None,
    autocommit: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write outside `transaction()` lasts once its block ends normally; one in a block that
    raised does not; a `transaction()` is durable at its own end, before the checkout ends.
    No connection goes back to the pool inside a transaction (psycopg_pool would warn)."""
    pool = await tpsycopg.open_pool(
        pg_dsn,
        min_size=1,
        max_size=1,
        application_name=app_name(),
        kwargs={"autocommit": autocommit},
    )
    try:
        with maybe_request_id(request_id), caplog.at_level(logging.INFO, "psycopg.pool"):
            async with pool.acquire() as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
            assert await rows(monitor, table, 1) == 1
            async with pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES (2)")
                assert await rows(monitor, table, 2) == 1  # committed, not a savepoint
            with pytest.raises(RuntimeError):
                async with pool.acquire() as conn:
                    await conn.execute(f"INSERT INTO {table} VALUES (3)")
                    raise RuntimeError("the handler failed")
            assert await rows(monitor, table, 3) == (1 if autocommit else 0)
            assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


async def test_the_tag_is_the_requests_and_leaves_with_it(pg_dsn: str) -> None:
    """A checkout with a request id runs tagged with it; the next checkout of the same
    connection without one runs under the connection's own application_name again."""
    prefix = app_name()
    pool = await tpsycopg.open_pool(
        pg_dsn,
        min_size=1,
        max_size=1,
        application_name=prefix,
        kwargs={"application_name": f"{prefix}-own"},
    )
    setting = "SELECT current_setting('application_name')"
    try:
        with request_id_scope("req-tag"):
            assert await pool.fetchval(setting) == f"{prefix} req-tag"
        assert await pool.fetchval(setting) == f"{prefix}-own"
        assert await pool.fetchval(setting) == f"{prefix}-own"  # nothing left to reset
    finally:
        await pool.close()


async def test_a_statement_cancelled_at_the_deadline_leaves_the_connection_as_it_was(
    pg_dsn: str, monitor: asyncpg.Connection, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The deadline cancels a checkout mid-statement: its write is rolled back, and the same
    connection then works in its own mode (not autocommit) for the next request."""
    pool = await tpsycopg.open_pool(pg_dsn, min_size=1, max_size=1, application_name=app_name())
    try:
        with request_id_scope("req-cut"), caplog.at_level(logging.INFO, "psycopg.pool"):
            with pytest.raises(DeadlineExceeded):
                async with deadline_after(0.2), pool.acquire() as conn:
                    await conn.execute(f"INSERT INTO {table} VALUES (4)")
                    await conn.fetchval("SELECT pg_sleep(5)")
            async with pool.acquire() as conn:
                assert not conn.raw.autocommit
                await conn.execute(f"INSERT INTO {table} VALUES (5)")
                assert await rows(monitor, table, 5) == 0  # not yet: in the checkout's transaction
        assert (await rows(monitor, table, 4), await rows(monitor, table, 5)) == (0, 1)
    finally:
        await pool.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


@pytest.mark.parametrize("shape", ["transaction", "left open"])
async def test_a_commit_is_bounded_by_the_budget_and_its_failures_translated(
    pg_dsn: str, monitor: asyncpg.Connection, slow_commit_table: str, shape: str
) -> None:
    """As for asyncpg, for `transaction()`'s COMMIT and for the one that ends a checkout's
    open transaction: a COMMIT that takes a second, in a task that only inherited its 300 ms
    deadline, is cut at the budget (DeadlineExceeded, nothing written); cancelled by someone
    else while the budget lasts, it is UpstreamTimeout (psycopg's QueryCanceled was passed on
    from `transaction()`, and called a lost connection from the checkout's end)."""
    prefix = app_name()
    pool = await tpsycopg.open_pool(
        pg_dsn, min_size=1, max_size=1, application_name=prefix, kwargs={"application_name": prefix}
    )

    async def write(number: int) -> None:
        insert = f"INSERT INTO {slow_commit_table} VALUES ({number})"
        async with pool.acquire() as conn:
            if shape == "transaction":
                async with conn.transaction():
                    await conn.execute(insert)
            else:
                await conn.execute(insert)

    try:
        await check_commits_are_bounded_and_translated(write, monitor, prefix, LATE)
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
    assert await monitor.fetchval(f"SELECT count(*) FROM {slow_commit_table}") == 0
