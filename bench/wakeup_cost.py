"""Why the toolkit's timed ratios sit below its counted ones: the measured process's CPU per
request or call, split into the time its `write()` calls spend waking the peer and the rest.

    .venv/bin/python bench/wakeup_cost.py           # prints and updates docs/benchmarks.md
    .venv/bin/python bench/wakeup_cost.py --quick   # one round, prints only

Two cases of bench_toolkit.py, with and without tether, each measured process on one core and
its peer on the other: the middleware (uvicorn measured, wrk the peer) and the outbound client
(the calling process measured, uvicorn the peer). While the load runs, `perf record -e cpu-clock -g`
samples the measured process; the samples whose call chain passes through the kernel's
`sock_def_readable` are that process waking the reader of a socket it wrote to: the peer,
asleep on the other core.

That cost belongs to the benchmark, not to the code under test: a loopback peer that sleeps
whenever it waits must be woken for every message, and on a VM waking an idle core is
expensive. It grows as the measured process slows (its peer waits, asleep, for more of the
time), which amplifies any cost added to it. Between machines a `write()` hands the data to the
network card and wakes nobody. Needs perf, with permission to sample another process (root, or
kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import aiohttp

import tether
from _report import machine, run_wrk, write_section, wrk_requests
from apps import CALLER_BUDGET
from apps.client_calls import plain_get
from bench_toolkit import call_loop, free_port, process_cpu, server, uvicorn
from tether.http import Client

WAKING = "sock_def_readable"  # the kernel function that wakes a socket's sleeping reader
# Per symbol, the share of samples whose call chain passes through it.
REPORT = ["perf", "report", "--children", "--sort", "sym", "-g", "none", "--stdio"]


class Sampled:
    """`perf record` on one process from when this is made to `stop()`, which returns the
    fraction of the samples spent waking a socket's reader. (perf also ends by itself when the
    process does.)"""

    def __init__(self, pid: int) -> None:
        self._folder = tempfile.TemporaryDirectory()
        self._data = str(Path(self._folder.name) / "perf.data")
        self._perf = subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p", str(pid), "-o", self._data],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.2)  # perf attaches

    def stop(self) -> float:
        try:
            self._perf.send_signal(signal.SIGINT)
            _, errors = self._perf.communicate(timeout=60)
            if self._perf.returncode not in (0, -signal.SIGINT):
                raise RuntimeError(f"perf record failed: {errors.strip()}")
            report = subprocess.run(
                [*REPORT, "-i", self._data],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        finally:
            self._folder.cleanup()
        found = re.search(rf"^\s*([\d.]+)%\s+[\d.]+%\s+\[k\] {WAKING}$", report, re.M)
        return float(found.group(1)) / 100 if found else 0.0


# A run: (CPU microseconds per request or call of the measured process, of which waking).
Run = tuple[float, float]


def wrk(port: int, seconds: int) -> int:
    """Requests wrk completed in `seconds` with 50 connections on core 1."""
    return wrk_requests(run_wrk(f"http://127.0.0.1:{port}/", seconds))


def middleware_run(app: str, seconds: int) -> Run:
    port = free_port()
    with server(uvicorn(f"apps.hello:{app}", port), port) as pid:
        wrk(port, 1)  # warm-up
        perf = Sampled(pid)
        cpu_before = process_cpu(pid)
        requests = wrk(port, seconds)
        cpu = process_cpu(pid) - cpu_before
        share = perf.stop()
    per_request = cpu / requests * 1e6
    return per_request, per_request * share


def client_run(kind: str, seconds: int, url: str) -> Run:
    """bench_toolkit.py's client case; this (calling) process is measured."""

    async def drive() -> Run:
        async with (
            aiohttp.ClientSession() as session,
            Client() as client,
            AsyncExitStack() as budget,
        ):
            call = (
                partial(plain_get, session, url) if kind == "aiohttp" else partial(client.get, url)
            )
            await call_loop(call, 0.5)  # warm-up
            if kind == "tether":
                await budget.enter_async_context(tether.deadline_after(CALLER_BUDGET))
            perf = Sampled(os.getpid())
            cpu_before = time.process_time()
            started = time.perf_counter()
            rate = await call_loop(call, seconds)
            calls = rate * (time.perf_counter() - started)
            cpu = time.process_time() - cpu_before
            share = perf.stop()
        per_call = cpu / calls * 1e6
        return per_call, per_call * share

    return asyncio.run(drive())


# case: (reference, with tether, what is measured). Not the gRPC echo: perf's own cost on grpc's
# threads (which switch often) more than doubles the server's CPU per call, so its split says
# little. Without perf, the server's CPU per call (from /proc) gives the same ratio as its
# throughput: the server is saturated, and waking the caller is a few % of it either way.
CASES = {
    "middleware": (("plain", "with_tether"), "hello-world Starlette under uvicorn, per request"),
    "client": (("aiohttp", "tether"), "the calling process, per GET"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for tool in ("perf", "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"wakeup_cost.py needs {tool}, which is not installed")
    seconds, rounds = (3, 1) if args.quick else (4, 5)
    os.sched_setaffinity(0, {1})  # the load side (or the measured client) on core 1
    runs: dict[tuple[str, str], list[Run]] = {}
    upstream = free_port()
    with server(uvicorn("apps.hello:plain", upstream), upstream):
        for _ in range(rounds):
            for case, (kinds, _) in CASES.items():
                for kind in kinds:
                    if case == "middleware":
                        run = middleware_run(kind, seconds)
                    else:
                        run = client_run(kind, seconds, f"http://127.0.0.1:{upstream}/")
                    runs.setdefault((case, kind), []).append(run)

    def median(case: str, kind: str, part: int) -> float:
        return statistics.median(run[part] for run in runs[case, kind])

    lines = []
    for case, ((reference, tethered), measured) in CASES.items():
        ref_total = median(case, reference, 0)
        ref_rest = ref_total - median(case, reference, 1)
        for kind in (reference, tethered):
            total, waking = median(case, kind, 0), median(case, kind, 1)
            rest = total - waking
            lines.append(
                f"| {case}: {measured} | {kind} | {total:.1f} | {waking:.1f} ({waking / total:.0%})"
                f" | {rest:.1f} | {ref_total / total:.3f} | {ref_rest / rest:.3f} |"
            )
    rows = "\n".join(lines)
    body = f"""## The peer's wake-ups in the toolkit's timings (`bench/wakeup_cost.py`)

Reproduce: `.venv/bin/python bench/wakeup_cost.py` (needs perf). Machine: {machine()}.
Two cases of `bench_toolkit.py`; perf samples the measured process (cpu-clock) while the load
runs, {rounds} alternating rounds of {seconds} s, medians (perf's own cost is in the CPU
figures). "Waking the peer": samples inside the kernel's `{WAKING}`, reached from the
measured process's `write()`. Ratios: the reference's CPU per request or call over this row's,
all of it and without the waking.

| case | stack | CPU per request/call (us) | waking the peer | rest (us) | ratio | ratio, rest |
|---|---|---:|---:|---:|---:|---:|
{rows}
"""
    print(body)
    if not args.quick:
        write_section("wakeups", body)


if __name__ == "__main__":
    main()
