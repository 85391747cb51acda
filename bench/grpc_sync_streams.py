"""Synchronous gRPC server streams: what cancelled ones leave behind, and what a stream costs,
grpc.aio alone against tether's interceptor.

    .venv/bin/python bench/grpc_sync_streams.py            # prints and updates docs/benchmarks.md
    .venv/bin/python bench/grpc_sync_streams.py --quick    # fewer messages, prints only

A grpc.aio server in this process with a `def` generator handler and a four-thread
`migration_thread_pool`, once plain and once built by `tether.grpc.server()`:
- Cancelled streams, in a process of their own: six calls to a stream that yields every 20 ms,
  each cancelled by its client after two responses. Counted: calls that got their first
  response within 2 s, and generators closed (their `finally` ran) within 1 s of their
  cancel; then whether a `def` unary call is answered within 2 s; then, once the server has
  stopped and the script's main function has returned, how long the process takes to exit
  (killed after 10 s).
- Cost: one call streaming small messages as fast as the generator yields them; messages per
  second, tether's stepping against grpc's own, alternating rounds, median ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio

import tether.grpc
from _report import machine, write_section

SERVICE = "bench.SyncStreams"
HEADER = (
    "| server | streams that started within 2 s | generators closed after 1 s "
    "| unary call answered | process exit after its work | messages/s, one stream |\n"
    "|---|---:|---:|---|---|---:|"
)
STREAMS, THREADS = 6, 4


class Handlers:
    def __init__(self) -> None:
        self.closed = 0

    def endless(self, request: bytes, context: Any) -> Iterator[bytes]:
        try:
            while True:
                time.sleep(0.02)
                yield b"row"
        finally:
            self.closed += 1

    def many(self, request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(int(request)):
            yield b"0123456789abcdef"

    def unary(self, request: bytes, context: Any) -> bytes:
        return b"ok"


async def serve(kind: str, handlers: Handlers) -> tuple[grpc.aio.Server, str]:
    pool = ThreadPoolExecutor(THREADS)
    make = tether.grpc.server if kind == "tether" else grpc.aio.server
    server = make(migration_thread_pool=pool)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Endless": grpc.unary_stream_rpc_method_handler(handlers.endless),
                    "Many": grpc.unary_stream_rpc_method_handler(handlers.many),
                    "Unary": grpc.unary_unary_rpc_method_handler(handlers.unary),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def cancelled_streams(kind: str) -> dict[str, Any]:
    handlers = Handlers()
    server, target = await serve(kind, handlers)
    served = 0
    async with grpc.aio.insecure_channel(target) as channel:
        for _ in range(STREAMS):
            call = channel.unary_stream(f"/{SERVICE}/Endless")(b"")
            try:
                await asyncio.wait_for(call.read(), 2)
                await call.read()
                served += 1
            except TimeoutError:
                pass
            call.cancel()
        await asyncio.sleep(1)
        closed = handlers.closed
        try:
            await channel.unary_unary(f"/{SERVICE}/Unary")(b"", timeout=2)
            unary = "yes"
        except grpc.aio.AioRpcError as exc:
            unary = f"no ({exc.code().name})"
    await server.stop(grace=None)
    return {"served": served, "closed": closed, "unary": unary}


def leftovers_in_a_process(kind: str) -> dict[str, Any]:
    """`cancelled_streams(kind)` in a child process, and how long that process took to exit
    after its work was done."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    result: dict[str, Any] = json.loads(child.stdout.readline())
    done = time.perf_counter()
    try:
        child.wait(10)
        result["exit"] = f"{time.perf_counter() - done:.2f} s"
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        result["exit"] = "not within 10 s (killed)"
    return result


async def stream_rate(kind: str, messages: int) -> float:
    server, target = await serve(kind, Handlers())
    async with grpc.aio.insecure_channel(target) as channel:
        start = time.perf_counter()
        got = 0
        async for _ in channel.unary_stream(f"/{SERVICE}/Many")(str(messages).encode()):
            got += 1
        took = time.perf_counter() - start
    await server.stop(grace=None)
    assert got == messages
    return messages / took


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages, print only")
    parser.add_argument("--child", choices=("plain", "tether"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # the cancelled streams, in this process; then exit as any script would
        print(json.dumps(await cancelled_streams(args.child)), flush=True)
        return
    messages, rounds = (2_000, 3) if args.quick else (20_000, 7)

    leftovers = {kind: leftovers_in_a_process(kind) for kind in ("plain", "tether")}
    rates: dict[str, list[float]] = {"plain": [], "tether": []}
    for _ in range(rounds):
        for kind in ("plain", "tether"):
            rates[kind].append(await stream_rate(kind, messages))
    ratios = [t / p for p, t in zip(rates["plain"], rates["tether"], strict=True)]
    for kind in ("plain", "tether"):
        print(kind, leftovers[kind], f"{statistics.median(rates[kind]):,.0f} messages/s")

    rows = "\n".join(
        f"| {label} | {r['served']} of {STREAMS} | {r['closed']} | {r['unary']} | {r['exit']} | "
        f"{statistics.median(rates[kind]):,.0f} |"
        for kind, label, r in (
            ("plain", "grpc.aio alone", leftovers["plain"]),
            ("tether", "tether.grpc.server()", leftovers["tether"]),
        )
    )
    body = f"""## Synchronous gRPC server streams (`bench/grpc_sync_streams.py`)

Reproduce: `.venv/bin/python bench/grpc_sync_streams.py`. Machine: {machine()}.
grpc {grpc.__version__}. A `def` generator handler on a grpc.aio server with a {THREADS}-thread
`migration_thread_pool`. {STREAMS} streams, each cancelled by its client after two responses
(20 ms apart); then one `def` unary call; then the server stops and the script returns. Then
one stream of {messages:,} small messages as
fast as the generator yields them, {rounds} alternating rounds (median).

{HEADER}
{rows}

What tether's stepping costs: its stream rate over grpc's own, median of the rounds' ratios,
**{statistics.median(ratios):.2f}** (rounds {min(ratios):.2f}-{max(ratios):.2f}); a response
is made in a pool thread while the previous one is sent, as grpc's own way does. grpc.aio
alone keeps a pool thread blocked for good per cancelled synchronous stream, and never closes
its generator: once all {THREADS} threads are kept, nothing synchronous runs on that server,
and the process cannot exit by itself (the interpreter waits for those threads at exit; a pod
waits for its kill signal).
"""
    if not args.quick:
        write_section("grpc-sync-streams", body)
    print(body)


if __name__ == "__main__":
    asyncio.run(main())
