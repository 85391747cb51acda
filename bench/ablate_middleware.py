"""What each piece of TetherMiddleware costs, timed: the middleware case of bench_toolkit.py
with pieces taken out one at a time (`bench/apps/hello_ablated.py`), each against the plain app
in the same round.

    .venv/bin/python bench/ablate_middleware.py           # prints and updates docs/benchmarks.md
    .venv/bin/python bench/ablate_middleware.py --quick   # one round, prints only
"""

from __future__ import annotations

import argparse
import os
import statistics

from _report import machine, write_section
from apps.hello_ablated import PIECES
from bench_toolkit import free_port, server, uvicorn, wrk

VARIANTS = ["", *PIECES, ",".join(PIECES)]  # "": the whole middleware


def rate(app: str, ablate: str, seconds: int) -> float:
    port = free_port()
    os.environ["TETHER_ABLATE"] = ablate  # inherited by the server
    with server(uvicorn(app, port), port):
        wrk(port, 1)  # warm-up
        return wrk(port, seconds)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds, rounds = (3, 1) if args.quick else (3, 5)
    os.sched_setaffinity(0, {1})  # the load side runs on core 1, servers on core 0
    ratios: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        plain = rate("apps.hello:plain", "", seconds)
        for variant in VARIANTS:
            ratios[variant].append(rate("apps.hello_ablated:app", variant, seconds) / plain)
    lines = []
    for variant, found in ratios.items():
        label = "the whole middleware" if not variant else "without " + variant.replace(",", ", ")
        lines.append(
            f"| {label} | {statistics.median(found):.3f} | {min(found):.3f}-{max(found):.3f} |"
        )
    rows = "\n".join(lines)
    body = f"""## Middleware, piece by piece (`bench/ablate_middleware.py`)

Reproduce: `.venv/bin/python bench/ablate_middleware.py`. Machine: {machine()}.
The middleware case of `bench_toolkit.py` with pieces of the middleware taken out
(`bench/apps/hello_ablated.py` says what each is): requests per second against the plain app
in the same round, {rounds} rounds of {seconds} s, median and range.

| app | ratio to the plain app | rounds |
|---|---:|---|
{rows}
"""
    print(body)
    if not args.quick:
        write_section("ablation", body)


if __name__ == "__main__":
    main()
