"""Read/write split and `tether pg activity` against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

import tether.postgres
from tether import DeadlineExceeded, deadline_after
from tether.postgres.readwrite import ReadWriteSplit
from tether.request_id import request_id_scope

from .pg_helpers import app_name, wait_active

pytestmark = pytest.mark.integration


async def test_reads_fall_back_when_the_replica_is_too_slow(pg_dsn: str) -> None:
    """A read slower than its budget answers from the fallback while the caller has time."""
    primary = await tether.postgres.create_pool(pg_dsn, min_size=1, max_size=2)
    replica = await tether.postgres.create_pool(pg_dsn, min_size=1, max_size=2)
    split = ReadWriteSplit(primary, replica, write_budget=2, read_budget=0.1)

    async def cache() -> list[str]:
        return ["from cache"]

    try:
        async with deadline_after(2):
            fast = await split.read("SELECT 7 AS n", fallback=cache)
            slow = await split.read("SELECT pg_sleep(1)", fallback=cache)
            with pytest.raises(DeadlineExceeded):
                await split.read("SELECT pg_sleep(1)")  # no fallback: the error stands
        async with split.write() as conn:
            assert await conn.fetchval("SELECT current_setting('statement_timeout')") != "0"
    finally:
        await primary.close()
        await replica.close()
    assert [r["n"] for r in fast] == [7]  # type: ignore[index]
    assert slow == ["from cache"]


async def test_no_fallback_once_the_callers_budget_is_spent(pg_dsn: str) -> None:
    """When the caller's own deadline is what ran out, the fallback does not run."""
    pool = await tether.postgres.create_pool(pg_dsn, min_size=1, max_size=2)
    split = ReadWriteSplit(pool, write_budget=2, read_budget=5)
    used: list[int] = []

    async def cache() -> list[int]:
        used.append(1)
        return []

    try:
        with pytest.raises(DeadlineExceeded):
            async with deadline_after(0.1):
                await split.read("SELECT pg_sleep(1)", fallback=cache)
    finally:
        await pool.close()
    assert used == []


def test_bad_split_budgets_are_refused() -> None:
    """Non-positive budgets are ValueError."""
    with pytest.raises(ValueError, match="read_budget"):
        ReadWriteSplit(object(), write_budget=1, read_budget=0)  # type: ignore[arg-type]


async def test_pg_activity_lists_long_statements_with_request_ids(pg_dsn: str) -> None:
    """`tether pg activity --older-than 100ms` shows a running statement and its request id."""
    prefix = app_name()
    pool = await tether.postgres.create_pool(
        pg_dsn,
        min_size=1,
        max_size=1,
        application_name=prefix,
        server_settings={"application_name": prefix},
    )
    try:
        with request_id_scope("req-activity-1"):
            task = asyncio.create_task(pool.fetchval("SELECT pg_sleep(1)"))
        import asyncpg

        monitor = await asyncpg.connect(pg_dsn)
        await wait_active(monitor, prefix)
        await monitor.close()
        await asyncio.sleep(0.2)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tether.cli",
            "pg",
            "activity",
            "--dsn",
            pg_dsn,
            "--older-than",
            "100ms",
            "--json",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        await task
    finally:
        await pool.close()
    rows = [json.loads(line) for line in out.decode().splitlines()]
    ours = [r for r in rows if r["request_id"] == "req-activity-1"]
    assert proc.returncode == 0
    assert len(ours) == 1
    assert ours[0]["running_ms"] >= 100
    assert "pg_sleep" in ours[0]["query"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["pg", "activity", "--dsn", "postgresql://postgres@127.0.0.1:1/x"], 1, "cannot connect"),
        (["pg", "activity", "--older-than", "5"], 2, "duration"),
        (["pg", "activity", "--older-than=-1s"], 2, "duration"),
        (["pg"], 2, "PG_COMMAND"),
        (["pg", "activity", "--dsn", ""], 2, "--dsn"),
    ],
)
async def test_pg_activity_bad_input(argv: list[str], code: int, message: str) -> None:
    """Unreachable servers, bad durations and missing arguments: a message and an exit code."""
    env_free = {"PATH": "/usr/bin:/bin"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tether.cli",
        *argv,
        env=env_free,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == code
    assert message in err.decode()
