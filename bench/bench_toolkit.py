"""The cost of the service toolkit, each against the same stack without tether, same run.

    .venv/bin/python bench/bench_toolkit.py            # prints and updates docs/benchmarks.md
    .venv/bin/python bench/bench_toolkit.py --quick    # shorter runs, prints only

- ASGI middleware: hello-world Starlette under uvicorn (httptools, uvloop, one worker pinned to
  core 0), wrk on core 1 with 50 keep-alive connections; with vs without TetherMiddleware
  (target: at most 10% fewer requests per second). A third app, a middleware that only adds
  the two response headers tether must add, shows what those headers alone cost; a fourth,
  the plain app with a handler that spins as long as the middleware's own work takes in a
  loop (`per_call_cost.py`), what any work of that length costs.
- gRPC interceptors: unary echo, server in its own process, 50 concurrent callers; tether's
  server interceptor and client interceptors vs none (target: at most 10% slower). A third
  pair, a plain server called by tether's client, shows what grpc's own handling of the
  deadline that tether's client sends costs; a fourth, the plain server with a handler that
  spins as long as tether's server-side work takes in a loop, what any work of that length
  costs.
- Outbound client: 50 concurrent GETs to a local upstream; tether.http.Client inside a deadline
  block vs a plain aiohttp session (target: at least 90% of aiohttp's throughput).
Each case alternates with its reference in many short rounds; the ratio reported is the median
of the rounds' own ratios, with their range.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from functools import partial
from pathlib import Path

import aiohttp
import grpc.aio

import tether
import tether.grpc
from _report import machine, run_wrk, write_section, wrk_latency_ms, wrk_rate
from apps import BUSY_ENV, CALLER_BUDGET
from apps.client_calls import plain_get
from per_call_cost import added_costs
from tether.demo.chain import free_port
from tether.http import Client

BENCH = Path(__file__).resolve().parent
PY = sys.executable


def wait_for(port: int, seconds: float = 10.0) -> None:
    """Return once something accepts connections on `port`; raise after `seconds`."""
    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.025)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def server(argv: list[str], port: int, core: str = "0") -> Iterator[int]:
    """Run `argv` pinned to `core` until the block ends; yields its process id."""
    taskset = ["taskset", "-c", core] if shutil.which("taskset") else []
    proc = subprocess.Popen(
        [*taskset, *argv], cwd=BENCH, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(port)
        yield proc.pid  # taskset runs the server in its own process
    finally:
        proc.terminate()
        proc.wait(10)


def uvicorn(app: str, port: int) -> list[str]:
    return [
        PY,
        "-m",
        "uvicorn",
        app,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
    ]


def wrk(port: int, seconds: int) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of wrk with 50 connections on core 1."""
    report = run_wrk(f"http://127.0.0.1:{port}/", seconds)
    return wrk_rate(report), wrk_latency_ms(report, "99%")


def middleware_runs(
    seconds: int, rounds: int, busy_us: float
) -> dict[str, list[tuple[float, float]]]:
    """Per app, each round's requests per second and p99 latency (ms). The busy app's handler
    spins `busy_us` per request."""
    os.environ[BUSY_ENV] = f"{busy_us:.3f}"
    apps = {
        "plain": "apps.hello:plain",
        "headers": "apps.hello:headers_only",
        "busy": "apps.hello:busy",
        "tether": "apps.hello:with_tether",
    }
    results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in apps}
    for _ in range(rounds):
        for kind in apps:
            port = free_port()
            with server(uvicorn(apps[kind], port), port):
                wrk(port, 1)  # warm-up
                results[kind].append(wrk(port, seconds))
    return results


async def call_loop(
    call: Callable[[], Awaitable[object]], seconds: float, concurrency: int = 50
) -> float:
    """Calls per second that `concurrency` tasks complete in `seconds`."""
    done = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await call()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) that process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def grpc_rate(kind: str, port: int, seconds: float, server_pid: int) -> tuple[float, float]:
    """Calls per second, and CPU seconds per call of the server and the calling process
    together (time the hypervisor takes from the VM is not in it)."""
    channel = (
        tether.grpc.insecure_channel(f"127.0.0.1:{port}")
        if kind == "tether"
        else grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    )
    async with channel, AsyncExitStack() as budget:
        echo = channel.unary_unary("/bench.Echo/Echo")
        await call_loop(lambda: echo(b"x"), 0.5)  # warm-up
        if kind == "tether":
            await budget.enter_async_context(tether.deadline_after(CALLER_BUDGET))
        cpu_before = process_cpu(server_pid) + time.process_time()
        started = time.perf_counter()
        rate = await call_loop(lambda: echo(b"x"), seconds)
        calls = rate * (time.perf_counter() - started)
        cpu = process_cpu(server_pid) + time.process_time() - cpu_before
        return rate, cpu / calls


# (server, client): without tether; tether on both sides; a plain server called by tether's
# client, which sends the caller's deadline: what grpc's own handling of a deadline costs; and
# a plain server whose handler spins as long as tether's server-side work takes in a loop.
GRPC_PAIRS = {
    "plain": ("plain", "plain"),
    "tether": ("tether", "tether"),
    "deadline": ("plain", "tether"),
    "busy": ("busy", "plain"),
}


def grpc_runs(seconds: int, rounds: int, busy_us: float) -> dict[str, list[tuple[float, float]]]:
    """Per pair of `GRPC_PAIRS`, each round's calls per second and CPU seconds per call. The
    busy server's handler spins `busy_us` per call."""
    os.environ[BUSY_ENV] = f"{busy_us:.3f}"
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in GRPC_PAIRS}
    for _ in range(rounds):
        for name, (server_kind, client_kind) in GRPC_PAIRS.items():
            port = free_port()
            with server([PY, "-m", "apps.grpc_echo", str(port), server_kind], port) as pid:
                results[name].append(asyncio.run(grpc_rate(client_kind, port, seconds, pid)))
    return results


async def client_rate(kind: str, url: str, seconds: float) -> float:
    if kind == "aiohttp":
        async with aiohttp.ClientSession() as session:
            plain = partial(plain_get, session, url)
            await call_loop(plain, 0.5)
            return await call_loop(plain, seconds)
    async with Client() as client:
        await call_loop(lambda: client.get(url), 0.5)
        async with tether.deadline_after(CALLER_BUDGET):
            return await call_loop(lambda: client.get(url), seconds)


def client_runs(seconds: int, rounds: int) -> dict[str, list[float]]:
    """Per client, each round's calls per second."""
    results: dict[str, list[float]] = {"aiohttp": [], "tether": []}
    port = free_port()
    with server(uvicorn("apps.hello:plain", port), port, core="0"):
        for _ in range(rounds):
            for kind in ("aiohttp", "tether"):
                results[kind].append(
                    asyncio.run(client_rate(kind, f"http://127.0.0.1:{port}/", seconds))
                )
    return results


class Paired:
    """One case against its reference, measured in the same rounds."""

    def __init__(self, without: list[float], with_: list[float]) -> None:
        self.without = statistics.median(without)
        self.with_ = statistics.median(with_)
        # Each round measures both back to back, so a machine that slows down between rounds
        # moves both figures of that round: the ratio is the median of the rounds' ratios.
        ratios = [w / wo for w, wo in zip(with_, without, strict=True)]
        self.ratio = statistics.median(ratios)
        self.low, self.high = min(ratios), max(ratios)


def cpu_ticks() -> tuple[int, int]:
    """(stolen, total) CPU ticks of the whole machine so far, from /proc/stat (0, 0 if none)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0, 0
    ticks = [int(field) for field in fields[:8]]  # user .. steal (guest time is within user)
    return ticks[7], sum(ticks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only",
        choices=["middleware", "grpc", "client"],
        help="run one case and print it (does not update the docs)",
    )
    args = parser.parse_args()
    # Many short rounds rather than a few long ones: this VM's speed drifts within minutes.
    seconds, rounds = (3, 1) if args.quick else (3, 10)
    os.sched_setaffinity(0, {1})  # the load side runs on core 1, servers on core 0
    if args.only == "client":
        print(client_runs(seconds, rounds))
        return
    # tether's own per-request work, timed in a loop: what the reference apps spin for
    asgi_us, grpc_us = added_costs()
    if args.only:
        print(f"spin: ASGI {asgi_us:.2f} us, gRPC {grpc_us:.2f} us")
        if args.only == "middleware":
            print(middleware_runs(seconds, rounds, asgi_us))
        else:
            print(grpc_runs(seconds, rounds, grpc_us))
        return
    stolen_before, total_before = cpu_ticks()
    mw_runs = middleware_runs(seconds, rounds, asgi_us)
    gr_runs = grpc_runs(seconds, rounds, grpc_us)
    cl_runs = client_runs(seconds, rounds)
    stolen_after, total_after = cpu_ticks()
    stolen = (stolen_after - stolen_before) / max(total_after - total_before, 1)

    def rates(runs: list[tuple[float, float]]) -> list[float]:
        return [rate for rate, _ in runs]

    references = {
        "middleware": rates(mw_runs["plain"]),
        "gRPC": rates(gr_runs["plain"]),
        "client": cl_runs["aiohttp"],
    }
    spread = ", ".join(f"{name} {max(r) / min(r):.2f}" for name, r in references.items())

    mw = Paired(rates(mw_runs["plain"]), rates(mw_runs["tether"]))
    headers = Paired(rates(mw_runs["plain"]), rates(mw_runs["headers"]))
    mw_busy = Paired(rates(mw_runs["plain"]), rates(mw_runs["busy"]))
    p99 = {kind: statistics.median(p for _, p in runs) for kind, runs in mw_runs.items()}
    gr = Paired(rates(gr_runs["plain"]), rates(gr_runs["tether"]))
    deadline = Paired(rates(gr_runs["plain"]), rates(gr_runs["deadline"]))
    gr_busy = Paired(rates(gr_runs["plain"]), rates(gr_runs["busy"]))
    # CPU per call, inverted so that, like a rate, more is better (calls per CPU second)
    gr_cpu = Paired(*([1 / cpu for _, cpu in gr_runs[name]] for name in ("plain", "tether")))
    cl = Paired(cl_runs["aiohttp"], cl_runs["tether"])

    def row(case: str, pair: Paired, target: bool = True) -> str:
        if not target:
            verdict = ""
        elif pair.ratio < 0.9:
            verdict = ">= 0.90 (misses)"
        elif pair.low < 0.9:
            verdict = ">= 0.90 (meets in the median; some rounds miss)"
        else:
            verdict = ">= 0.90 (meets)"
        return (
            f"| {case} | {pair.without:,.0f} | {pair.with_:,.0f} | {pair.ratio:.3f} "
            f"| {pair.low:.3f}-{pair.high:.3f} | {verdict} |"
        )

    rows = "\n".join(
        [
            row("ASGI middleware: Starlette hello under uvicorn, wrk 50 conns (req/s)", mw),
            f"| same, p99 latency | {p99['plain']:.2f} ms | {p99['tether']:.2f} ms | | | |",
            row(
                "of which the two response headers alone (a middleware that only adds them)",
                headers,
                target=False,
            ),
            row(
                f"reference: the plain app, its handler spinning {asgi_us:.1f} us per request "
                "(the middleware's own work, timed in a loop)",
                mw_busy,
                target=False,
            ),
            row("gRPC unary echo, 50 concurrent callers (calls/s), server + client side", gr),
            row(
                "same, calls per CPU second (server and caller together)",
                gr_cpu,
                target=False,
            ),
            row(
                "of which grpc's own: plain server, tether's client (sends the deadline)",
                deadline,
                target=False,
            ),
            row(
                f"reference: the plain server, its handler spinning {grpc_us:.1f} us per call "
                "(tether's server-side work, timed in a loop)",
                gr_busy,
                target=False,
            ),
            row(
                "outbound client, 50 concurrent GETs (calls/s): aiohttp vs `tether.http.Client`",
                cl,
            ),
        ]
    )
    body = f"""## Service toolkit overhead (`bench/bench_toolkit.py`)

Reproduce: `.venv/bin/python bench/bench_toolkit.py`. Machine: {machine()}.
Servers on core 0, load on core 1; {rounds} alternating rounds of {seconds} s. Rates are the
rounds' medians; the ratio is the median of the rounds' own ratios (each round measures both
back to back), with their range. CPU time the hypervisor took from this VM during the run
(steal): {stolen:.1%}.

| case | without tether | with tether | ratio | rounds' ratios | target |
|---|---:|---:|---:|---|---|
{rows}

How steady the machine was, as the references' fastest round over their slowest: {spread}.
On a steady machine these stay close to 1; the further above it, the more something else
slowed this VM during the run, and the less its ratios say.

What these figures say, and what was measured and tried to explain them: the hand-written
section after this one (it names the run it reads).
"""
    print(body)
    if not args.quick:
        write_section("toolkit", body)


if __name__ == "__main__":
    main()
