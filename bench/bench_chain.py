"""One budget from the client to PostgreSQL: the chain with tether against the same chain without.

    .venv/bin/python bench/bench_chain.py            # prints and updates docs/benchmarks.md
    .venv/bin/python bench/bench_chain.py --quick    # fewer requests, shorter load, prints only

The chain (tether/demo/chain.py): client -> tether gateway -> orders (FastAPI, uvicorn) ->
inventory (grpc.aio) -> PostgreSQL (TETHER_PG_DSN, or an embedded one), each in its own process.
Without tether: client -> the same services with fixed 5 s/10 s timeouts and no propagation.

Part 1: 200 requests with a 300 ms budget whose query sleeps 5 s, in waves of 10 (the database
pool's size). For each: when the client got its answer, when each hop's work stopped and when
the PostgreSQL backend went idle, all measured from the request's deadline; the server-seconds
of work done after deadlines; what is still busy 100 ms after the last deadline.

Part 2: 50 concurrent clients for 30 s, half of the requests slower than their budget (a 5 s
query under 300 ms), half fast (a 10 ms query): the fast half's success rate and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from _report import machine, write_section
from tether.demo.chain import DEMO_HEADERS, Chain, running_chain
from tether.postgres.embedded import postgres_dsn

BUDGET = 0.3
SLOW_QUERY_MS = 5000
WAVE = 10  # the inventory service's pool size
CLIENT_SLACK = 1.0  # the client waits this long past the deadline, to see when it is answered
INTERVAL = 1.0  # part 2: each client starts a request this often


@dataclass
class Backends:
    """pg_stat_activity watched every 2 ms: when each inventory backend's statement ended."""

    ended: list[tuple[float, float]] = field(default_factory=list)  # (query start, ended)
    active_now: int = 0

    async def watch(self, dsn: str, stop: asyncio.Event) -> None:
        monitor = await asyncpg.connect(dsn)
        running: dict[int, float] = {}  # pid -> when first seen running
        try:
            while not stop.is_set():
                rows = await monitor.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'inventory%' "
                    "AND state = 'active' AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()"
                )
                now = time.monotonic()
                active = {row["pid"] for row in rows}
                self.active_now = len(active)
                for pid in active - running.keys():
                    running[pid] = now
                for pid in running.keys() - active:
                    self.ended.append((running.pop(pid), now))
                await asyncio.sleep(0.002)
        finally:
            await monitor.close()


def headers(budget: float | None) -> dict[str, str]:
    out = {**DEMO_HEADERS, "X-Request-ID": str(uuid.uuid4())}
    if budget is not None:
        out["X-Request-Timeout"] = str(int(budget * 1000))
    return out


async def one(
    session: aiohttp.ClientSession, chain: Chain, query_ms: int, tag: str, give_up: float
) -> tuple[int | None, float]:
    """(status or None when the client gave up, when it ended) for one request."""
    url = chain.path(f"/orders/{tag}?query_ms={query_ms}&tag={tag}")
    try:
        async with session.get(
            url,
            headers=headers(BUDGET if chain.tethered else None),
            timeout=aiohttp.ClientTimeout(total=give_up),
        ) as answer:
            await answer.read()
            return answer.status, time.monotonic()
    except (TimeoutError, aiohttp.ClientError):
        return None, time.monotonic()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def part_one(chain: Chain, requests: int) -> dict[str, Any]:
    stop = asyncio.Event()
    backends = Backends()
    watcher = asyncio.create_task(backends.watch(chain.dsn, stop))
    await asyncio.sleep(0.2)
    deadlines: dict[str, float] = {}
    busy: list[int] = []  # PostgreSQL backends active 100 ms after each wave's deadline
    tasks: list[tuple[int, int]] = []  # tasks alive in orders and inventory then
    answers: list[float] = []
    statuses: list[int | None] = []
    # Without tether the client still gives up at 300 ms; with it, it waits to be answered.
    give_up = BUDGET + CLIENT_SLACK if chain.tethered else BUDGET
    async with aiohttp.ClientSession() as session:
        for _ in range(requests // WAVE):
            sent = time.monotonic()
            tags = [uuid.uuid4().hex[:12] for _ in range(WAVE)]
            for tag in tags:
                deadlines[tag] = sent + BUDGET
            results = await asyncio.gather(
                *(one(session, chain, SLOW_QUERY_MS, tag, give_up) for tag in tags)
            )
            for status, ended in results:
                statuses.append(status)
                answers.append(ended - (sent + BUDGET))
            # What is still busy 100 ms after this wave's deadline.
            await asyncio.sleep(max(0.0, sent + BUDGET + 0.1 - time.monotonic()))
            busy.append(backends.active_now)
            events = await chain.events()
            tasks.append((events["orders"]["tasks"], events["inventory"]["tasks"]))
            # The next wave starts when this one's work is over (or after 6 s at most).
            settle = time.monotonic() + 6.0
            while backends.active_now and time.monotonic() < settle:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
    events = await chain.events()
    stop.set()
    await watcher
    hops: dict[str, list[float]] = {"orders": [], "inventory": []}
    for hop in hops:
        for event in events[hop]["events"]:
            if event["tag"] in deadlines:
                hops[hop].append(event["ended"] - deadlines[event["tag"]])
    wave_deadlines = sorted(deadlines.values())
    backend_idle = []
    for started, ended in backends.ended:
        due = max((d for d in wave_deadlines if d <= started + BUDGET), default=None)
        if due is not None:
            backend_idle.append(ended - due)
    wasted = sum(max(0.0, x) for values in hops.values() for x in values) + sum(
        max(0.0, x) for x in backend_idle
    )
    answered = [a for a, s in zip(answers, statuses, strict=True) if s is not None]
    return {
        "statuses": statuses,
        "answered": answered,
        "hops": hops,
        "backend_idle": backend_idle,
        "wasted": wasted,
        "busy_after": max(busy),
        "tasks_after": {
            "orders": max(t[0] for t in tasks),
            "inventory": max(t[1] for t in tasks),
        },
    }


async def part_two(chain: Chain, seconds: float, clients: int) -> dict[str, Any]:
    """`clients` callers, each starting a request every `INTERVAL` seconds whether or not its
    last one has come back (open loop, as real traffic does); every other request is slow.
    The fast half's success rate and latency."""
    fast: list[tuple[bool, float]] = []
    end = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    pending: set[asyncio.Task[None]] = set()

    async def request(session: aiohttp.ClientSession, slow: bool) -> None:
        started = time.monotonic()
        query = SLOW_QUERY_MS if slow else 10
        status, ended = await one(session, chain, query, uuid.uuid4().hex[:12], BUDGET + 0.2)
        if not slow:
            fast.append((status == 200, ended - started))

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(INTERVAL * index / clients)  # spread the clients' phases
        turn = index
        while time.monotonic() < end:
            turn += 1
            task = asyncio.create_task(request(session, slow=turn % 2 == 0))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(INTERVAL)

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(i, session) for i in range(clients)))
        await asyncio.gather(*pending)
    ok = [latency for success, latency in fast if success]
    return {
        "fast_requests": len(fast),
        "fast_success": len(ok) / max(1, len(fast)),
        "fast_p50": pct(ok, 0.5),
        "fast_p99": pct(ok, 0.99),
    }


def ms(value: float) -> str:
    return "-" if value != value else f"{value * 1000:.0f} ms"  # NaN: nothing measured


async def main_async(quick: bool) -> None:
    requests, seconds = (40, 8.0) if quick else (200, 30.0)
    results: dict[str, dict[str, Any]] = {}
    with postgres_dsn() as dsn:
        for tethered in (True, False):
            name = "with tether" if tethered else "without tether"
            async with running_chain(dsn, tethered=tethered) as chain:
                print(f"{name}: part 1 ({requests} slow requests)...", file=sys.stderr)
                first = await part_one(chain, requests)
            async with running_chain(dsn, tethered=tethered) as chain:
                print(f"{name}: part 2 ({seconds:.0f} s of load)...", file=sys.stderr)
                second = await part_two(chain, seconds, 50)
            results[name] = {**first, **second}
    with_t, without = results["with tether"], results["without tether"]
    rows = []
    for label, key in (
        ("client answered (after its deadline)", "answered"),
        ("orders handler stopped", "orders"),
        ("inventory handler stopped", "inventory"),
        ("PostgreSQL backend idle", "backend_idle"),
    ):
        cells = []
        for result in (with_t, without):
            values = result["hops"][key] if key in ("orders", "inventory") else result[key]
            if not values:
                cells.append("never (the client gave up)" if key == "answered" else "-")
            else:
                cells.append(f"p50 {ms(pct(values, 0.5))}, p99 {ms(pct(values, 0.99))}")
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    both = (with_t, without)
    rows.append(
        "| work done after the deadlines (server-seconds, all hops) | "
        + " | ".join(f"{r['wasted']:.2f} s" for r in both)
        + " |"
    )
    rows.append(
        "| PostgreSQL backends busy 100 ms after a wave's deadline (most seen) | "
        + " | ".join(str(r["busy_after"]) for r in both)
        + " |"
    )
    rows.append(
        "| tasks alive then, most seen (orders, inventory) | "
        + " | ".join(f"{r['tasks_after']['orders']}, {r['tasks_after']['inventory']}" for r in both)
        + " |"
    )
    load_rows = [
        "| fast requests sent | " + " | ".join(f"{r['fast_requests']:,}" for r in both) + " |",
        "| fast requests answered 200 | "
        + " | ".join(f"**{r['fast_success']:.1%}**" for r in both)
        + " |",
        "| their latency p50 / p99 | "
        + " | ".join(f"{ms(r['fast_p50'])} / {ms(r['fast_p99'])}" for r in both)
        + " |",
    ]
    ratio = without["wasted"] / max(with_t["wasted"], 1e-9)
    answered_504 = sum(1 for s in with_t["statuses"] if s == 504)
    body = f"""## End to end: one budget from the client to PostgreSQL (`bench/bench_chain.py`)

Reproduce: `.venv/bin/python bench/bench_chain.py`. Machine: {machine()}.
The chain of `tether demo`: client -> gateway -> orders (FastAPI) -> inventory (grpc.aio) ->
PostgreSQL, one process each, all on this machine. Without tether: the same services with fixed
timeouts (5 s on the gRPC call, 10 s on the statement), nothing passed on, nothing cancelled;
the client calls the orders service directly and gives up after 300 ms.

**Part 1**: {requests} requests with a 300 ms budget whose query sleeps 5 s, in waves of {WAVE}
(the database pool's size). Times are measured from each request's deadline.

| | with tether | without tether |
|---|---|---|
{chr(10).join(rows)}

With tether, {answered_504} of {requests} requests were answered 504 at the budget; wasted work is
**{ratio:.0f}x smaller** than without (target: at least 50x).

**Part 2**: 50 concurrent clients for {seconds:.0f} s, each starting a request every
{INTERVAL:g} s (open loop: real callers do not wait for the last answer), every other request
slower than its 300 ms budget (a 5 s query), the rest fast (a 10 ms query); database pool of
{WAVE}. Each slow request holds a pooled connection until its work stops: 0.3 s with tether
(the pool can carry {WAVE / BUDGET:.0f} of them a second), 5 s without (2 a second), against the
{50 / INTERVAL / 2:.0f} a second that arrive.

| | with tether | without tether |
|---|---|---|
{chr(10).join(load_rows)}

Without tether the slow half's queries hold every pooled connection for 5 s after their clients
left, so the fast half waits behind them and times out; with tether each slow query is cancelled
on the server at its deadline and the pool keeps serving the fast half.
"""
    print(body)
    if not quick:
        write_section("chain", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    asyncio.run(main_async(args.quick))


if __name__ == "__main__":
    main()
