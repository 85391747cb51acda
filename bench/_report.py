"""Shared by the benchmarks: timing loops, wrk, machine facts, and writing docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine() -> str:
    """One line that says what the numbers were measured on."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()} ({sys.implementation.name}), "
        f"{time.strftime('%Y-%m-%d')}"
    )


def per_op_ns(run: Callable[[int], float], iterations: int, rounds: int) -> float:
    """Median over `rounds` of the nanoseconds per operation that `run(iterations)` measured.

    `run(n)` performs the operation n times and returns the seconds it took.
    """
    samples = [run(iterations) / iterations * 1e9 for _ in range(rounds)]
    return statistics.median(samples)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (fraction in 0..1) of `values`."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between `<!-- name:start -->` and `<!-- name:end -->`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    BENCHMARKS_MD.write_text(text)


def run_wrk(url: str, seconds: int, headers: Mapping[str, str] | None = None) -> str:
    """wrk's report for `url`: one thread and 50 keep-alive connections for `seconds`, on core 1
    (the load side; servers run on core 0), with latency percentiles."""
    taskset = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    header_args = [
        arg for name, value in (headers or {}).items() for arg in ("-H", f"{name}: {value}")
    ]
    command = [*taskset, "wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", *header_args, url]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def wrk_rate(report: str) -> float:
    """Requests per second, from a wrk report."""
    return float(_wrk_field(r"Requests/sec:\s+([\d.]+)", report).group(1))


def wrk_requests(report: str) -> int:
    """Requests completed, from a wrk report."""
    return int(_wrk_field(r"(\d+) requests in", report).group(1))


def wrk_latency_ms(report: str, percentile: str) -> float:
    """A latency percentile (`"99%"`) in milliseconds, from a wrk report made with --latency."""
    found = _wrk_field(rf"{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\b", report)
    return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]


def _wrk_field(pattern: str, report: str) -> re.Match[str]:
    found = re.search(pattern, report)
    if found is None:
        raise RuntimeError(f"no {pattern!r} in wrk's report: {report}")
    return found
