"""Watching a real PostgreSQL from the side: is a tagged backend still running its statement?"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import tether.postgres.sqlalchemy as tsqlalchemy
from tether import DeadlineExceeded, UpstreamTimeout, deadline_after


def app_name() -> str:
    """A fresh application_name prefix, so each test finds only its own backends."""
    return f"t{uuid.uuid4().hex[:10]}"


async def active_backends(monitor: asyncpg.Connection, prefix: str) -> int:
    count: int = await monitor.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 || '%' "
        "AND state = 'active' AND pid <> pg_backend_pid()",
        prefix,
    )
    return count


async def all_backends(monitor: asyncpg.Connection, prefix: str) -> int:
    count: int = await monitor.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 || '%' "
        "AND pid <> pg_backend_pid()",
        prefix,
    )
    return count


async def idle_after(monitor: asyncpg.Connection, prefix: str, limit: float = 5.0) -> float:
    """Poll until no backend tagged `prefix` is active; the time.perf_counter() it went idle."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        if await active_backends(monitor, prefix) == 0:
            return time.perf_counter()
        await asyncio.sleep(0.002)
    raise AssertionError(f"backends tagged {prefix} still active after {limit} s")


async def wait_active(
    monitor: asyncpg.Connection, prefix: str, limit: float = 5.0, count: int = 1
) -> None:
    """Poll until at least `count` backends tagged `prefix` are running a statement."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        if await active_backends(monitor, prefix) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"fewer than {count} backends tagged {prefix} became active")


def sqlalchemy_engine(dsn: str, prefix: str, size: int) -> AsyncEngine:
    """An instrumented SQLAlchemy engine over asyncpg, its connections named `prefix`."""
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(
        url,
        pool_size=size,
        max_overflow=0,
        connect_args={"server_settings": {"application_name": prefix}},
    )
    return tsqlalchemy.instrument(engine, application_name=prefix)


async def check_commits_are_bounded_and_translated(
    write: Callable[[int], Awaitable[None]], monitor: asyncpg.Connection, prefix: str, late: float
) -> None:
    """`write(n)` inserts `n` into a `slow_commit_table` (its COMMIT takes a second) over
    connections named `prefix`. In a task that only inherited a 300 ms deadline, the write
    must end by then with DeadlineExceeded; under a 5 s budget, cancelled from outside while
    it commits, with UpstreamTimeout."""
    started = time.perf_counter()
    async with deadline_after(0.3):
        child = asyncio.create_task(write(1))  # inherits the deadline; not cancelled by it
    with pytest.raises(DeadlineExceeded):
        await child
    assert time.perf_counter() - started < 0.3 + late

    async def cancel_from_outside() -> None:
        await wait_active(monitor, prefix)
        await monitor.execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name"
            " LIKE $1 || '%' AND state = 'active'",
            prefix,
        )

    canceller = asyncio.create_task(cancel_from_outside())
    with pytest.raises(UpstreamTimeout):
        async with deadline_after(5):
            await write(2)
    await canceller
