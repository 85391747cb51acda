"""The chain's inventory service: grpc.aio, querying PostgreSQL.

    python -m tether.demo.inventory --port 50051 --dsn postgresql://... [--plain]

`/demo.Inventory/Reserve` takes JSON `{"item": "42", "query_seconds": 0.01}` and runs
`SELECT pg_sleep(query_seconds)`, standing for a query of that length.

With tether (the default) the set-up is `tether.grpc.server()` and `tether.postgres.create_pool`:
the call runs under the caller's deadline and the query is cancelled on the server when it runs
out. `--plain` is what a team writes without it: `grpc.aio.server()` and asyncpg with a fixed
10 s statement timeout, so a query runs on after its caller has gone.

`/demo.Inventory/Events` returns what the service did (for the benchmark and the tests): when
each call's work ended, how, and how many tasks are alive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

import asyncpg
import grpc
import grpc.aio

import tether
import tether.grpc
import tether.postgres

SERVICE = "demo.Inventory"
POOL_SIZE = 10


class Inventory:
    def __init__(self, pool: Any, tethered: bool) -> None:
        self.pool = pool
        self.tethered = tethered
        self.events: list[dict[str, Any]] = []

    async def reserve(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        asked = json.loads(request)
        seconds = float(asked.get("query_seconds", 0.01))
        tag = str(asked.get("tag", ""))
        outcome = "cancelled"
        try:
            if self.tethered:  # the budget reaches PostgreSQL: tether's pool enforces it
                await self.pool.fetchval("SELECT pg_sleep($1)", seconds)
            else:  # a fixed statement timeout, whatever the caller's budget
                async with self.pool.acquire() as connection:
                    await connection.fetchval("SELECT pg_sleep($1)", seconds, timeout=10)
            outcome = "ok"
            return json.dumps({"item": asked.get("item"), "reserved": True}).encode()
        except tether.DeadlineExceeded:
            outcome = "deadline_exceeded"
            raise
        finally:
            self.events.append(
                {"tag": tag, "hop": "inventory", "ended": time.monotonic(), "outcome": outcome}
            )

    async def report(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return json.dumps({"events": self.events, "tasks": len(asyncio.all_tasks())}).encode()

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Reserve": grpc.unary_unary_rpc_method_handler(self.reserve),
                "Events": grpc.unary_unary_rpc_method_handler(self.report),
            },
        )


async def serve(port: int, dsn: str, tethered: bool) -> None:
    pool: Any
    if tethered:
        pool = await tether.postgres.create_pool(
            dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, application_name="inventory"
        )
        server = tether.grpc.server(default_budget=5.0)  # the whole tether set-up
    else:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            server_settings={"application_name": "inventory-plain"},
        )
        server = grpc.aio.server()
    inventory = Inventory(pool, tethered)
    server.add_generic_rpc_handlers([inventory.handlers()])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"inventory ({'tether' if tethered else 'plain'}) on 127.0.0.1:{port}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--plain", action="store_true", help="without tether")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.dsn, not args.plain))


if __name__ == "__main__":
    main()
