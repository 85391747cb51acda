"""User-space CPU instructions per request/call of the toolkit's three benchmark cases, with and
without tether, counted by valgrind's callgrind: exact and repeatable, unlike timings on a
shared machine. Alongside, callgrind's simulated first-level cache misses and mispredicted
branches, which show why added code costs more time than its instructions suggest.

    .venv/bin/python bench/count_instructions.py           # prints and updates docs/benchmarks.md
    .venv/bin/python bench/count_instructions.py --quick   # fewer requests, prints only

- ASGI middleware: each hello-world app (`bench/apps/hello.py`: plain, headers_only,
  with_tether) runs under uvicorn inside callgrind with counting off; a client outside valgrind
  warms it up, counting is switched on for the measured requests (50 keep-alive connections),
  then off again.
- gRPC server: the echo server (`bench/apps/grpc_echo.py`) counted the same way, called by a
  plain grpc.aio client and by tether's client (which sends a deadline, as tether services do).
- Outbound client: the calling process itself under callgrind (hash seed fixed), once with no
  calls and once with the measured calls; the difference per call. The upstream runs outside.

Counts include what valgrind's slowness adds: timers that would ring every few hundred
requests ring every few requests under valgrind (tether's disconnect watchlist rings once per
5 ms), so tether's counts are slightly pessimistic. Needs valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from functools import partial
from typing import NamedTuple

import grpc.aio

import tether
import tether.grpc
from _report import machine, write_section
from apps import CALLER_BUDGET
from apps.client_calls import calls
from bench_toolkit import BENCH, PY, free_port, server, uvicorn, wait_for

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CONTENT_LENGTH = re.compile(rb"content-length: (\d+)", re.IGNORECASE)
EVENTS = re.compile(r"Events\s*:\s*(.*)")
COLLECTED = re.compile(r"Collected\s*:\s*(.*)")
# Besides instructions, valgrind simulates the first-level caches and the branch predictors.
SIMULATE = ["--cache-sim=yes", "--branch-sim=yes"]


class Counts(NamedTuple):
    """Per request or call: instructions, and simulated first-level instruction-cache misses,
    data-cache misses and mispredicted branches (conditional and indirect)."""

    instructions: float
    i1_misses: float
    d1_misses: float
    mispredicts: float

    @classmethod
    def parse(cls, valgrind_output: str) -> Counts:
        names, values = EVENTS.search(valgrind_output), COLLECTED.search(valgrind_output)
        if names is None or values is None:
            raise RuntimeError(f"no counts in valgrind's output: {valgrind_output[-2000:]}")
        event = dict(zip(names.group(1).split(), map(int, values.group(1).split()), strict=True))
        return cls(
            event["Ir"],
            event["I1mr"],
            event["D1mr"] + event["D1mw"],
            event["Bcm"] + event["Bim"],
        )

    def minus(self, other: Counts) -> Counts:
        return Counts(*(a - b for a, b in zip(self, other, strict=True)))

    def per(self, units: int) -> Counts:
        return Counts(*(value / units for value in self))


async def http_requests(port: int, requests: int, connections: int = 50) -> None:
    async def one_connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = CONTENT_LENGTH.search(head)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
        writer.close()

    await asyncio.gather(*(one_connection(requests // connections) for _ in range(connections)))


async def grpc_calls(port: int, count: int, client: str) -> None:
    target = f"127.0.0.1:{port}"
    channel = (
        tether.grpc.insecure_channel(target)
        if client == "tether"
        else grpc.aio.insecure_channel(target)
    )
    async with channel:
        echo = channel.unary_unary("/bench.Echo/Echo")
        # In chunks, each under a budget of its own: under valgrind's simulation 2,000 calls
        # take longer than one CALLER_BUDGET.
        for chunk in range(0, count, 250):
            async with tether.deadline_after(CALLER_BUDGET):
                await calls(lambda: echo(b"x"), min(250, count - chunk))


def per_unit(
    argv: list[str], port: int, drive: Callable[[int], Awaitable[None]], units: int
) -> Counts:
    """Counts per unit of the server `argv` runs under callgrind, counting switched on only
    while `drive(units)` runs (after a warm-up of 200)."""
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                *SIMULATE,
                f"--callgrind-out-file={os.path.join(folder, 'callgrind.out')}",
                *argv,
            ],
            cwd=BENCH,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(port, seconds=120)  # a Python server starts slowly under valgrind
            asyncio.run(drive(200))
            counting("on", server.pid)
            asyncio.run(drive(units))
            counting("off", server.pid)
        finally:
            server.terminate()
            _, errors = server.communicate(timeout=120)
    return Counts.parse(errors).per(units)


def counting(switch: str, pid: int) -> None:
    subprocess.run(["callgrind_control", "-i", switch, str(pid)], check=True, capture_output=True)


def middleware_counts(requests: int) -> list[tuple[str, Counts]]:
    rows = []
    for app, label in (
        ("plain", "plain Starlette hello"),
        ("headers_only", "+ only the two response headers tether adds"),
        ("with_tether", "+ TetherMiddleware"),
    ):
        port = free_port()
        argv = uvicorn(f"apps.hello:{app}", port)
        rows.append((label, per_unit(argv, port, partial(http_requests, port), requests)))
    return rows


def grpc_counts(count: int) -> list[tuple[str, Counts]]:
    rows = []
    pairs = (("plain", "plain"), ("plain", "tether"), ("tether", "plain"), ("tether", "tether"))
    for kind, client in pairs:
        port = free_port()
        argv = [PY, "-m", "apps.grpc_echo", str(port), kind]
        drive = partial(grpc_calls, port, client=client)
        rows.append((f"{kind} server, {client} client", per_unit(argv, port, drive, count)))
    return rows


def client_counts(count: int) -> list[tuple[str, Counts]]:
    """The calling process counted whole (hash seed fixed), with `count` calls and with none."""
    port = free_port()

    def total(kind: str, n: int) -> Counts:
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                *SIMULATE,
                "--callgrind-out-file=/dev/null",
                PY,
                "-m",
                "apps.client_calls",
                kind,
                str(port),
                str(n),
            ],
            cwd=BENCH,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
        return Counts.parse(run.stderr)

    with server(uvicorn("apps.hello:plain", port), port):
        return [
            (kind, total(kind, count).minus(total(kind, 0)).per(count))
            for kind in ("aiohttp", "tether")
        ]


def added(reference: Counts, counts: Counts) -> str:
    """What `counts` adds to `reference`, in per cent of each."""
    more = [100 * (b / a - 1) for a, b in zip(reference, counts, strict=True)]
    return (
        f"{more[0]:+.0f}% instructions, {more[1]:+.0f}% instruction-cache misses and "
        f"{more[3]:+.0f}% mispredicted branches"
    )


def table(rows: list[tuple[str, Counts]], unit: str) -> str:
    reference = rows[0][1].instructions
    lines = [
        f"| case | instructions/{unit} | ratio to the first row "
        "| L1i misses | L1d misses | mispredicted branches |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {c.instructions:,.0f} | {reference / c.instructions:.3f} "
        f"| {c.i1_misses:,.0f} | {c.d1_misses:,.0f} | {c.mispredicts:,.0f} |"
        for name, c in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    units = 500 if args.quick else 2000
    middleware = middleware_counts(units)
    print(middleware, flush=True)
    grpc_rows = grpc_counts(units)
    print(grpc_rows, flush=True)
    client = client_counts(units)
    print(client, flush=True)
    body = report(units, middleware, grpc_rows, client)
    print(body)
    if not args.quick:
        write_section("instructions", body)


Rows = list[tuple[str, Counts]]


def report(units: int, middleware: Rows, grpc_rows: Rows, client: Rows) -> str:
    """The docs section for these counts."""
    return f"""## Service toolkit in CPU instructions (`bench/count_instructions.py`)

Reproduce: `.venv/bin/python bench/count_instructions.py` (needs valgrind).
Machine: {machine()}.
User-space instructions counted by callgrind over {units:,} requests or calls (50 at a time),
per request or call: exact for the same code, whatever else the machine is doing.

ASGI middleware, the server process (uvicorn + Starlette hello):

{table(middleware, "request")}

gRPC unary echo, the server process:

{table(grpc_rows, "call")}

Outbound HTTP client, the calling process (50 concurrent GETs):

{table(client, "call")}

Misses and mispredictions are valgrind's simulation (first-level caches of this machine's
sizes, a simple branch predictor), not hardware counters. They help explain why timed ratios
sit below counted ones: each miss or misprediction costs a core the time of tens of
instructions. Added by tether, against the first row of each table:
- middleware: {added(middleware[0][1], middleware[2][1])};
- gRPC server (tether on both sides): {added(grpc_rows[0][1], grpc_rows[3][1])};
- client: {added(client[0][1], client[1][1])};
- the two headers alone: {added(middleware[0][1], middleware[1][1])}.

tether's code mispredicts branches more often than the code around it and misses the
instruction cache about as often. The two headers alone add almost no instruction-cache
misses: uvicorn handles them in its header loop, code it runs for every response anyway.

Under valgrind a request takes ~50x longer, so the disconnect watchlist's timer (one ring per
5 ms, normally once per ~75 requests) rings every few requests: the middleware's count is a
little pessimistic.
"""


if __name__ == "__main__":
    main()
