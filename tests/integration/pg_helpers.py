"""Watching a real PostgreSQL from the side: is a tagged backend still running its statement?"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg


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
