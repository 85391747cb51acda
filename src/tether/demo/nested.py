"""`tether demo`: one request's budget flowing through nested calls, in real time.

A request arrives with a budget. It calls an "orders" step, which calls a "stock" step, which
asks for more time than it has, and a "report" step that would take longer than the budget.
Along the way the demo prints the budget left, the header tether would send to the next hop,
what happens to a child started with `TaskGroup` versus a plain `create_task`, and a
`detached()` audit write that finishes after the request's deadline. Last, a 5 s query on a real
PostgreSQL (TETHER_PG_DSN, or an embedded one) under a 250 ms budget, and what is left running
on the server afterwards: nothing.
"""

from __future__ import annotations

import asyncio
import time

from tether import (
    DeadlineExceeded,
    TaskGroup,
    current_deadline,
    deadline_after,
    deadline_at,
    detached,
    time_remaining,
)
from tether.wire import deadline_from_headers, outgoing_headers

_start = time.monotonic()


def say(depth: int, text: str) -> None:
    elapsed = (time.monotonic() - _start) * 1000
    left = time_remaining()
    budget = "no deadline" if left is None else f"{left * 1000:6.1f} ms left"
    print(f"{elapsed:7.1f} ms | {budget:>15} | {'  ' * depth}{text}", flush=True)


async def hop(depth: int, name: str) -> None:
    """Pass the ambient budget to a "next hop" as a header, and read it back there."""
    headers = outgoing_headers()
    say(depth, f"{name}: calling the next hop with {headers[0][0]}: {headers[0][1]}")
    async with deadline_at(deadline_from_headers(headers)):
        received = current_deadline()
        left = 0.0 if received is None else received.remaining() * 1000
        say(depth + 1, f"{name} (next hop): read the header, its budget is {left:.1f} ms")
        await asyncio.sleep(0.02)


async def stock(depth: int) -> None:
    async with deadline_after(10) as block:  # asks for far more than the request has
        say(
            depth, f"stock: asked for 10 s, got the caller's deadline (inherited={block.inherited})"
        )
        await asyncio.sleep(0.04)
        await hop(depth + 1, "stock")


async def slow_report(depth: int, stopped: list[str]) -> None:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        stopped.append(f"report child cancelled at {(time.monotonic() - _start) * 1000:.1f} ms")
        raise


async def leaky(leaked: list[str]) -> None:
    await asyncio.sleep(0.6)
    at = (time.monotonic() - _start) * 1000
    leaked.append(f"plain create_task child still running at {at:.1f} ms")


async def audit(depth: int) -> None:
    async with detached():
        say(depth, "audit: detached, writing the audit record (100 ms)")
        await asyncio.sleep(0.1)
        say(depth, "audit: written")


async def handle_request(
    budget: float, stopped: list[str], leaked: list[str], leaks: list[asyncio.Task[None]]
) -> None:
    async with deadline_after(budget):
        say(1, f"request: budget of {budget * 1000:.0f} ms set at the edge")
        await asyncio.sleep(0.03)
        say(1, "orders: 30 ms of work done")
        async with deadline_after(0.1):
            say(2, "orders: narrowed to 100 ms for the stock call")
            await stock(3)
        await audit(2)
        leaks.append(asyncio.create_task(leaky(leaked)))
        say(2, "report: starting a 5 s child in a TaskGroup and a 600 ms plain task")
        async with TaskGroup() as group:
            group.create_task(slow_report(3, stopped))


async def database(depth: int, dsn: str) -> None:
    """The budget reaches PostgreSQL: a 5 s query stops on the server when the budget runs out."""
    import tether.postgres
    from tether.postgres.activity import long_running

    pool = await tether.postgres.create_pool(dsn, min_size=1, max_size=1)
    try:
        try:
            async with deadline_after(0.25):
                say(depth, "database: SELECT pg_sleep(5) with what is left of a 250 ms budget")
                await pool.fetchval("SELECT pg_sleep(5)")
        except DeadlineExceeded as exc:
            say(depth, f"database: {exc}")
        await asyncio.sleep(0.05)
        running = await long_running(dsn, 0.1)
        left = [s for s in running if "pg_sleep" in s.query]
        say(depth, f"database: statements still running on the server: {len(left)}")
    finally:
        await pool.close()


async def run_nested(budget: float, dsn: str) -> None:
    global _start
    _start = time.monotonic()
    print("    time |          budget | what happens")
    stopped: list[str] = []
    leaked: list[str] = []
    leaks: list[asyncio.Task[None]] = []
    try:
        await handle_request(budget, stopped, leaked, leaks)
        say(0, "request finished within its budget")
    except DeadlineExceeded as exc:
        say(0, f"request ended: {exc}")
    for line in stopped:
        say(0, f"{line}  <- TaskGroup children end with the budget")
    await asyncio.gather(*leaks)
    for line in leaked:
        say(0, f"{line}  <- a plain task outlives the budget (the leak)")
    await database(0, dsn)
