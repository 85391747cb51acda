"""tether's three PostgreSQL integrations against many random checkouts at once (seeded).

Per driver (asyncpg, SQLAlchemy 2 asyncio, psycopg 3), 150 checkouts, 12 at a time on a pool of
4, each with a request id: a statement on an acquired connection, a transaction that writes a
row and then sleeps, or a statement through the pool (SQLAlchemy: a session); sleeps from none
to a second under budgets of 20-300 ms; some callers cancelled from outside at a random moment.
Invariants: each checkout ends within its budget (or at its outside cancel); what it raises is
`DeadlineExceeded` (`PoolExhausted` included), or `CancelledError` only when cancelled from
outside; a transaction that returned has its row committed, and one whose statement could not
have finished has none; afterwards no statement runs on and every connection of the pool
serves at once (none leaked).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

import tether.postgres
import tether.postgres.psycopg as tpsycopg
import tether.postgres.sqlalchemy as tsqlalchemy
from tether import DeadlineExceeded, deadline_after
from tether.request_id import request_id_scope

from .pg_helpers import app_name, idle_after, sqlalchemy_engine
from .servers import fuzz_seed

pytestmark = pytest.mark.integration

SLEEPS = (0.0, 0.0, 0.01, 0.05, 0.2, 1.0)
POOL_SIZE = 4
# How late a checkout may end here: 12 checkouts at once, their drivers' clean-up after a
# cancellation (SQLAlchemy closes the cancelled connection before the caller gets its error),
# late in a process that has run most of the suite. Seen for SQLAlchemy: 7-13 ms run alone, up
# to 33 ms beside a busy core, 113 ms once in a full run (its cause not found). Still far from
# the 1 s sleeps running on; how closely each driver stops at the deadline is
# test_postgres_drivers.py's and the benchmark's.
SLACK = 0.25


class Checkouts(Protocol):
    async def statement(self, sql: str) -> Any: ...
    async def through_the_pool(self, sql: str) -> Any: ...
    async def transaction(self, table: str, number: int, sql: str) -> None: ...
    async def close(self) -> None: ...


class PoolCheckouts:
    """tether's asyncpg and psycopg pools, which have the same shape."""

    def __init__(self, pool: tether.postgres.Pool | tpsycopg.Pool) -> None:
        self.pool = pool

    async def statement(self, sql: str) -> Any:
        async with self.pool.acquire() as conn:
            return await conn.fetchval(sql)

    async def through_the_pool(self, sql: str) -> Any:
        return await self.pool.fetchval(sql)

    async def transaction(self, table: str, number: int, sql: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(f"INSERT INTO {table} VALUES ({number:d})")
            await conn.execute(sql)

    async def close(self) -> None:
        await self.pool.close()


class SQLAlchemyCheckouts:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine)

    async def statement(self, sql: str) -> Any:
        async with tsqlalchemy.connect(self.engine) as conn:
            return (await conn.execute(text(sql))).scalar()

    async def through_the_pool(self, sql: str) -> Any:
        async with tsqlalchemy.session(self.sessions) as session:
            return (await session.execute(text(sql))).scalar()

    async def transaction(self, table: str, number: int, sql: str) -> None:
        async with tsqlalchemy.connect(self.engine) as conn, conn.begin():
            await conn.execute(text(f"INSERT INTO {table} VALUES (:n)"), {"n": number})
            await conn.execute(text(sql))

    async def close(self) -> None:
        await self.engine.dispose()


async def open_checkouts(name: str, dsn: str, prefix: str) -> Checkouts:
    if name == "asyncpg":
        pool = await tether.postgres.create_pool(
            dsn, min_size=1, max_size=POOL_SIZE, application_name=prefix
        )
        return PoolCheckouts(pool)
    if name == "sqlalchemy":
        return SQLAlchemyCheckouts(sqlalchemy_engine(dsn, prefix, POOL_SIZE))
    psycopg_pool = await tpsycopg.open_pool(
        dsn,
        min_size=1,
        max_size=POOL_SIZE,
        application_name=prefix,
        kwargs={"application_name": prefix},
    )
    return PoolCheckouts(psycopg_pool)


@dataclass
class Case:
    number: int
    shape: str  # statement, pool, transaction
    sleep: float
    budget: float
    cancel_at: float | None

    @property
    def sql(self) -> str:
        return f"SELECT pg_sleep({self.sleep})" if self.sleep else "SELECT 1"


def random_case(rng: random.Random, number: int) -> Case:
    return Case(
        number=number,
        shape=rng.choice(["statement", "pool", "transaction"]),
        sleep=rng.choice(SLEEPS),
        budget=rng.uniform(0.02, 0.3),
        cancel_at=rng.choice([None, None, None, rng.uniform(0.0, 0.3)]),
    )


@pytest.mark.parametrize("driver", ["asyncpg", "sqlalchemy", "psycopg"])
async def test_random_checkouts_end_in_time_keep_their_writes_and_leave_a_healthy_pool(
    driver: str, pg_dsn: str, monitor: asyncpg.Connection, table: str
) -> None:
    seed = fuzz_seed()
    rng = random.Random(f"{seed}-{driver}")
    cases = [random_case(rng, number) for number in range(150)]
    prefix = app_name()
    checkouts = await open_checkouts(driver, pg_dsn, prefix)
    slots = asyncio.Semaphore(12)
    outcomes: dict[int, tuple[BaseException | None, float]] = {}

    async def run(case: Case) -> None:
        async def checkout() -> None:
            with request_id_scope(f"case-{case.number}"):
                async with deadline_after(case.budget):
                    if case.shape == "statement":
                        await checkouts.statement(case.sql)
                    elif case.shape == "pool":
                        await checkouts.through_the_pool(case.sql)
                    else:
                        await checkouts.transaction(table, case.number, case.sql)

        async with slots:
            started = time.perf_counter()
            task = asyncio.create_task(checkout())
            if case.cancel_at is not None:
                asyncio.get_running_loop().call_later(case.cancel_at, task.cancel)
            try:
                await task
                failure: BaseException | None = None
            except BaseException as exc:
                failure = exc
            outcomes[case.number] = (failure, time.perf_counter() - started)

    try:
        await asyncio.gather(*(run(case) for case in cases))
        await idle_after(monitor, prefix, limit=2.0)  # no statement runs on
        # every connection came back: the whole pool serves at once, well within the budget
        async with deadline_after(2.0):
            held = [checkouts.statement("SELECT pg_sleep(0.2)") for _ in range(POOL_SIZE)]
            started = time.perf_counter()
            await asyncio.gather(*held)
            assert time.perf_counter() - started < 2 * 0.2
    finally:
        await checkouts.close()
    written = {row["n"] for row in await monitor.fetch(f"SELECT n FROM {table}")}
    for case in cases:
        failure, took = outcomes[case.number]
        where = f"seed {seed}, {driver}, {case}: {failure!r} after {took:.3f} s"
        ends_by = min(case.budget, case.cancel_at if case.cancel_at is not None else case.budget)
        assert took <= ends_by + SLACK, where
        if isinstance(failure, asyncio.CancelledError):
            assert case.cancel_at is not None, where
        elif failure is not None:
            assert isinstance(failure, DeadlineExceeded), where
        if case.shape == "transaction":
            if failure is None:
                assert case.number in written, where  # returned: committed
            elif case.sleep > case.budget + SLACK:
                assert case.number not in written, where  # could not finish: rolled back
        else:
            assert case.number not in written, where
    kinds = {type(failure).__name__ for failure, _ in outcomes.values()}
    assert {"NoneType", "DeadlineExceeded", "PoolExhausted"} <= kinds, kinds
