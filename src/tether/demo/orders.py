"""The chain's orders service: FastAPI, calling the inventory service over gRPC.

    python -m tether.demo.orders --port 8001 --inventory 127.0.0.1:50051 [--plain]

With tether (the default) the set-up is two lines: `app.add_middleware(TetherMiddleware)` and
`tether.grpc.insecure_channel`. Every request then runs under the budget it brought, is
cancelled when the budget runs out or the client leaves, and passes what is left to the
inventory service. `--plain` is the same service without them: a fixed 5 s timeout on the gRPC
call, nothing passed on, and a handler that runs on after its client has gone (uvicorn does
not cancel it).

Routes: `GET /v1/orders/{id}?query_ms=N` (reserves the item; the inventory's query takes N ms),
`GET /v1/broken` (a plain JSON 500 error, which the gateway rewrites into a problem), and
`GET /_events` (what the service did, for the benchmark and the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc.aio
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

import tether
import tether.grpc
from tether.http import TetherMiddleware

PLAIN_TIMEOUT = 5.0  # what a team without tether puts on its client calls


def create_app(inventory: str, *, tethered: bool) -> FastAPI:
    calls: dict[str, Any] = {}
    events: list[dict[str, Any]] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if tethered:
            channel: Any = tether.grpc.insecure_channel(inventory)  # passes the budget on
        else:
            channel = grpc.aio.insecure_channel(inventory)
        async with channel:
            calls["reserve"] = channel.unary_unary("/demo.Inventory/Reserve")
            yield

    app = FastAPI(lifespan=lifespan)
    if tethered:
        app.add_middleware(TetherMiddleware, default_budget=3.0, max_budget=30.0)

    @app.get("/v1/orders/{order_id}")
    async def get_order(order_id: str, query_ms: int = 10, tag: str = "") -> dict[str, Any]:
        received = tether.time_remaining()
        request = json.dumps({"item": order_id, "query_seconds": query_ms / 1000, "tag": tag})
        outcome = "cancelled"
        try:
            if tethered:
                answer = await calls["reserve"](request.encode())
            else:
                answer = await calls["reserve"](request.encode(), timeout=PLAIN_TIMEOUT)
            outcome = "ok"
        except tether.DeadlineExceeded:
            outcome = "deadline_exceeded"
            raise
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name.lower()
            raise
        finally:
            events.append(
                {"tag": tag, "hop": "orders", "ended": time.monotonic(), "outcome": outcome}
            )
        return {
            "order": order_id,
            "inventory": json.loads(answer),
            "budget_received_ms": None if received is None else round(received * 1000),
        }

    @app.get("/v1/broken")
    async def broken() -> JSONResponse:
        return JSONResponse({"message": "the orders ledger is closed for maintenance"}, 500)

    @app.get("/_events")
    async def report() -> dict[str, Any]:
        return {"events": events, "tasks": len(asyncio.all_tasks())}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--inventory", required=True, help="host:port of the inventory service")
    parser.add_argument("--plain", action="store_true", help="without tether")
    args = parser.parse_args()
    app = create_app(args.inventory, tethered=not args.plain)
    print(f"orders ({'plain' if args.plain else 'tether'}) on 127.0.0.1:{args.port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
