"""A grpc.aio "stock" service wired with tether: one line of set-up (`tether.grpc.server`).

    .venv/bin/python examples/grpc_service.py --port 50051 [--delay 0.05]

Every call runs under the caller's deadline (or a 1 s default), is cancelled when it runs out,
never leaks exception text to the client, and logs one line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import grpc

import tether
import tether.grpc


def stock_handlers(delay: float) -> grpc.GenericRpcHandler:
    async def check(item: bytes, context: Any) -> bytes:
        left = tether.time_remaining() or 0.0
        await asyncio.sleep(delay)  # stands for real work: a query, a call
        return f"{item.decode()} in stock (had {left * 1000:.0f} ms)".encode()

    return grpc.method_handlers_generic_handler(
        "demo.Stock", {"Check": grpc.unary_unary_rpc_method_handler(check)}
    )


async def serve(port: int, delay: float) -> None:
    server = tether.grpc.server(default_budget=1.0)  # the whole tether set-up
    server.add_generic_rpc_handlers([stock_handlers(delay)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"stock service on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds of work per call")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    asyncio.run(serve(args.port, args.delay))
