"""Why the timed middleware ratio sits below the counted one: the server's CPU per request, split
into the time its `write()` calls spend waking the load generator and everything else.

    .venv/bin/python bench/wakeup_cost.py           # prints and updates docs/benchmarks.md
    .venv/bin/python bench/wakeup_cost.py --quick   # one round, prints only

The same apps and load as bench_toolkit.py's middleware case (uvicorn on core 0, wrk with 50
keep-alive connections on core 1). While wrk runs, `perf record -e cpu-clock -g` samples the
server; the samples whose call chain passes through the kernel's `sock_def_readable` are the
server waking the reader of the socket it wrote to (wrk, asleep on the other core). That cost
belongs to the machine, not to the app: a loopback peer that sleeps whenever it waits must be
woken on every answer, and on a VM waking an idle core is expensive. It grows as the server
slows (the load generator waits, asleep, for more of the time), which amplifies any cost added
to the app. Needs perf, with permission to sample another process (root, or
kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _report import machine, write_section
from bench_toolkit import free_port, process_cpu, server, uvicorn

APPS = {
    "plain": "apps.hello:plain",
    "headers": "apps.hello:headers_only",
    "tether": "apps.hello:with_tether",
}
WAKING = "sock_def_readable"  # the kernel function that wakes a socket's sleeping reader


def wrk(port: int, seconds: int) -> int:
    """Requests wrk completed in `seconds` with 50 connections on core 1."""
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c50", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"(\d+) requests in", out)
    if found is None:
        raise RuntimeError(f"unexpected wrk output: {out}")
    return int(found.group(1))


def share_in(report: str, symbol: str) -> float:
    """The fraction of samples whose call chain passes through `symbol` (perf's children %)."""
    found = re.search(rf"^\s*([\d.]+)%\s+[\d.]+%\s+\[k\] {re.escape(symbol)}$", report, re.M)
    return float(found.group(1)) / 100 if found else 0.0


def one_run(app: str, seconds: int) -> tuple[float, float]:
    """Server CPU microseconds per request, and the part of it spent waking the reader."""
    port = free_port()
    with server(uvicorn(APPS[app], port), port) as pid, tempfile.TemporaryDirectory() as folder:
        wrk(port, 1)  # warm-up
        data = str(Path(folder) / "perf.data")
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p", str(pid), "-o", data],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        cpu_before = process_cpu(pid)
        requests = wrk(port, seconds)
        cpu = process_cpu(pid) - cpu_before
        perf.send_signal(signal.SIGINT)
        _, errors = perf.communicate(timeout=60)
        if perf.returncode not in (0, -signal.SIGINT):
            raise RuntimeError(f"perf record failed: {errors.strip()}")
        report = subprocess.run(
            ["perf", "report", "-i", data, "--children", "--sort", "sym", "-g", "none", "--stdio"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    per_request = cpu / requests * 1e6
    return per_request, per_request * share_in(report, WAKING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for tool in ("perf", "wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"wakeup_cost.py needs {tool}, which is not installed")
    seconds, rounds = (3, 1) if args.quick else (4, 5)
    os.sched_setaffinity(0, {1})
    runs: dict[str, list[tuple[float, float]]] = {app: [] for app in APPS}
    for _ in range(rounds):
        for app in APPS:
            runs[app].append(one_run(app, seconds))

    def median(app: str, part: int) -> float:
        return statistics.median(run[part] for run in runs[app])

    plain_total = median("plain", 0)
    plain_rest = plain_total - median("plain", 1)
    lines = []
    for app, label in (
        ("plain", "plain Starlette hello"),
        ("headers", "+ only the two response headers"),
        ("tether", "+ TetherMiddleware"),
    ):
        total, waking = median(app, 0), median(app, 1)
        rest = total - waking
        lines.append(
            f"| {label} | {total:.1f} | {waking:.1f} ({waking / total:.0%}) | {rest:.1f} "
            f"| {plain_total / total:.3f} | {plain_rest / rest:.3f} |"
        )
    rows = "\n".join(lines)
    body = f"""## Middleware: CPU spent waking the load generator (`bench/wakeup_cost.py`)

Reproduce: `.venv/bin/python bench/wakeup_cost.py` (needs perf). Machine: {machine()}.
The middleware case of `bench_toolkit.py`; perf samples the server (cpu-clock) while wrk runs,
{rounds} alternating rounds of {seconds} s, medians. "Waking the load generator": samples inside
the kernel's `{WAKING}`, reached from the server's `write()` of an answer.

| app | server CPU per request (us) | of it, waking wrk | the rest (us) | ratio | ratio, rest |
|---|---:|---:|---:|---:|---:|
{rows}
"""
    print(body)
    if not args.quick:
        write_section("wakeups", body)


if __name__ == "__main__":
    main()
