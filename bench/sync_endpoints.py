"""What over-budget `def` endpoints leave behind: worker threads that run on after their
clients were answered, with and without `check_deadline()`.

    .venv/bin/python bench/sync_endpoints.py            # prints and updates docs/benchmarks.md
    .venv/bin/python bench/sync_endpoints.py --quick    # fewer requests, prints only

A Starlette app behind TetherMiddleware, under uvicorn in this process: a `def` endpoint (run
in a worker thread, as Starlette and FastAPI run every `def` endpoint) does 1 s of work in
10 ms steps. Requests, each with a 300 ms budget, arrive 20 at a time ten times a second (200
a second, far more than the endpoint can serve); every client gets its 504 at its budget.
Measured: how many endpoint calls ran at once at the most, how long the last one ran after the
last answer, and the thread-seconds spent after the deadlines; once for an endpoint that never
looks at the budget, once for one that calls `check_deadline()` at each step.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from typing import Any

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _report import machine, percentile, write_section
from bench_toolkit import free_port
from tether import check_deadline
from tether.http import TetherMiddleware

BUDGET = 0.3
STEPS = 100  # of 10 ms: 1 s of work
WAVE, WAVE_EVERY = 20, 0.1  # requests arrive 20 at a time, 10 times a second


class Work:
    """The worker threads' own record: when each started and ended."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def endpoint(self, request: Request) -> JSONResponse:
        checked = request.path_params["style"] == "checked"
        start = time.perf_counter()
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            for _ in range(STEPS):
                if checked:
                    check_deadline()
                time.sleep(0.01)
            return JSONResponse({"done": True})
        finally:
            with self.lock:
                self.running -= 1
                self.spans.append((start, time.perf_counter()))


async def burst(url: str, count: int, work: Work) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def one() -> tuple[int, float]:
            start = time.perf_counter()
            async with client.get(url, headers={"X-Request-Timeout": "300"}) as answer:
                await answer.read()
                return answer.status, time.perf_counter() - start

        async def waves() -> list[tuple[int, float]]:
            sending = []
            for _ in range(count // WAVE):
                sending += [asyncio.create_task(one()) for _ in range(WAVE)]
                await asyncio.sleep(WAVE_EVERY)
            return await asyncio.gather(*sending)

        requests = asyncio.ensure_future(waves())
        answers = await requests
    answered = time.perf_counter()
    while work.running and time.perf_counter() - answered < 5:  # until every call has ended
        await asyncio.sleep(0.005)
    with work.lock:
        spans, peak = list(work.spans), work.peak
        work.spans.clear()
        work.peak = 0
    last_end = max((end for _, end in spans), default=answered)
    # A thread's request arrived just before the thread started: its deadline is BUDGET later.
    after_deadline = sum(max(0.0, end - (start + BUDGET)) for start, end in spans)
    statuses = {status for status, _ in answers}
    if statuses != {504}:
        raise SystemExit(f"expected every answer to be a 504 at its budget, got {statuses}")
    return {
        "p99": percentile([took for _, took in answers], 0.99),
        "peak_running": peak,
        "threads_ran": len(spans),
        "ran_after_answers": max(0.0, last_end - answered),
        "thread_seconds_after": after_deadline,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, print only")
    args = parser.parse_args()
    count = 100 if args.quick else 400

    work = Work()
    app = Starlette(routes=[Route("/{style}", work.endpoint)])
    app.add_middleware(TetherMiddleware)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        results = {}
        for style in ("unchecked", "checked"):
            await asyncio.sleep(1)
            results[style] = await burst(f"http://127.0.0.1:{port}/{style}", count, work)
            print(style, results[style])
    finally:
        server.should_exit = True
        await serving

    rows = "\n".join(
        f"| {label} | {r['p99'] * 1000:.0f} ms | {r['peak_running']} | "
        f"{r['threads_ran']} | {r['ran_after_answers']:.2f} s | {r['thread_seconds_after']:.1f} |"
        for label, r in (
            ("never looks at the budget", results["unchecked"]),
            ("calls `check_deadline()` each step", results["checked"]),
        )
    )
    budget_ms, every_ms = round(BUDGET * 1000), round(WAVE_EVERY * 1000)
    header = (
        "| endpoint | answer p99 | calls running at once, peak | calls started "
        "| last call ended, after the last answer | thread-seconds after the deadlines |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    body = f"""## Over-budget `def` endpoints (`bench/sync_endpoints.py`)

Reproduce: `.venv/bin/python bench/sync_endpoints.py`. Machine: {machine()}.
A `def` endpoint behind TetherMiddleware under uvicorn does 1 s of work in 10 ms steps. {count}
requests, each with a {budget_ms} ms budget, arrive {WAVE} every {every_ms} ms: an overload, as
anyio lets 40 such calls run at once. Every client is answered at its budget either way (all
504, p99 from sending); what differs is what the worker threads do after the answers.

{header}
{rows}

anyio allows 40 of Starlette's worker-thread calls at once, but a call whose request is
cancelled gives its place back at once while its thread runs on. Under a stream of
over-budget requests, calls pile up past the limit, each running to its end for a client
that has gone. Work that calls `check_deadline()` between steps ends with its request, and so
does work whose I/O is bounded by the budget (`TetherSyncTransport`, an instrumented
synchronous SQLAlchemy engine): see docs/toolkit.md, "Synchronous endpoints".
"""
    if not args.quick:
        write_section("sync-endpoints", body)
    print(body)


if __name__ == "__main__":
    asyncio.run(main())
