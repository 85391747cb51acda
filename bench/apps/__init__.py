"""The services and callers the toolkit benchmarks run (timed and counted alike)."""

import os
from time import perf_counter

# The budget the benchmarks' callers run under: within the servers' default `max_budget`
# (60 s), as between tether services. A longer one is clamped by a tether gRPC server, which
# then arms a timer of its own (grpc's deadline is no longer the call's): counted, a call with
# tether's timer costs the server 7,000-9,500 instructions more (tether server, plain client vs
# tether's client).
CALLER_BUDGET = 30.0


# The per-request CPU time the "busy" reference apps spend in their handler, in microseconds,
# from the environment (bench_toolkit.py sets it to tether's own cost in a loop, measured by
# per_call_cost.py in the same run).
BUSY_ENV = "TETHER_BENCH_BUSY_US"


def busy_seconds() -> float:
    return float(os.environ.get(BUSY_ENV, "0")) / 1e6


def spin(seconds: float) -> None:
    """Keep the CPU busy for `seconds` (a loop on the clock: no sleep, no system call)."""
    until = perf_counter() + seconds
    while perf_counter() < until:
        pass
