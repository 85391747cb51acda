"""User-space CPU instructions per request/call of the toolkit's three benchmark cases, with and
without tether, counted by valgrind's callgrind: exact and repeatable, unlike timings on a
shared machine.

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

import grpc.aio

import tether
import tether.grpc
from _report import machine, write_section
from apps import CALLER_BUDGET
from apps.client_calls import calls
from bench_toolkit import BENCH, PY, free_port, server, uvicorn, wait_for

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CONTENT_LENGTH = re.compile(rb"content-length: (\d+)", re.IGNORECASE)
COLLECTED = re.compile(r"Collected : (\d+)")


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
        async with tether.deadline_after(CALLER_BUDGET):
            await calls(lambda: echo(b"x"), count)


def per_unit(
    argv: list[str], port: int, drive: Callable[[int], Awaitable[None]], units: int
) -> float:
    """Instructions per unit of the server `argv` runs under callgrind, counting switched on
    only while `drive(units)` runs (after a warm-up of 200)."""
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
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
    collected = COLLECTED.search(errors)
    assert collected is not None, errors[-2000:]
    return int(collected.group(1)) / units


def counting(switch: str, pid: int) -> None:
    subprocess.run(["callgrind_control", "-i", switch, str(pid)], check=True, capture_output=True)


def middleware_counts(requests: int) -> list[tuple[str, float]]:
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


def grpc_counts(count: int) -> list[tuple[str, float]]:
    rows = []
    pairs = (("plain", "plain"), ("plain", "tether"), ("tether", "plain"), ("tether", "tether"))
    for kind, client in pairs:
        port = free_port()
        argv = [PY, "apps/grpc_echo.py", str(port), kind]
        drive = partial(grpc_calls, port, client=client)
        rows.append((f"{kind} server, {client} client", per_unit(argv, port, drive, count)))
    return rows


def client_counts(count: int) -> list[tuple[str, float]]:
    """The calling process counted whole (hash seed fixed), with `count` calls and with none."""
    port = free_port()

    def total(kind: str, n: int) -> int:
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
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
        found = COLLECTED.search(run.stderr)
        assert found is not None, run.stderr[-2000:]
        return int(found.group(1))

    with server(uvicorn("apps.hello:plain", port), port):
        return [
            (kind, (total(kind, count) - total(kind, 0)) / count) for kind in ("aiohttp", "tether")
        ]


def table(rows: list[tuple[str, float]], reference: float, unit: str) -> str:
    lines = [f"| case | instructions/{unit} | ratio to the first row |", "|---|---:|---:|"]
    lines += [f"| {name} | {count:,.0f} | {reference / count:.3f} |" for name, count in rows]
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
    body = f"""## Service toolkit in CPU instructions (`bench/count_instructions.py`)

Reproduce: `.venv/bin/python bench/count_instructions.py` (needs valgrind).
Machine: {machine()}.
User-space instructions counted by callgrind over {units:,} requests or calls (50 at a time),
per request or call: exact for the same code, whatever else the machine is doing.

ASGI middleware, the server process (uvicorn + Starlette hello):

{table(middleware, middleware[0][1], "request")}

gRPC unary echo, the server process:

{table(grpc_rows, grpc_rows[0][1], "call")}

Outbound HTTP client, the calling process (50 concurrent GETs):

{table(client, client[0][1], "call")}

Under valgrind a request takes ~50x longer, so the disconnect watchlist's timer (one ring per
5 ms, normally once per ~75 requests) rings every few requests: the middleware's count is a
little pessimistic.
"""
    print(body)
    if not args.quick:
        write_section("instructions", body)


if __name__ == "__main__":
    main()
