"""A FastAPI "orders" service wired with tether: two lines of set-up.

    STOCK_TARGET=127.0.0.1:50051 .venv/bin/uvicorn examples.fastapi_service:app --port 8000
    curl -H 'X-Request-Timeout: 300' localhost:8000/orders/42

`app.add_middleware(TetherMiddleware)` gives every request its budget (from X-Request-Timeout,
or a 2 s default), cancels the handler when it runs out or when the client leaves, and answers
errors as RFC 9457 problems. `tether.grpc.insecure_channel` passes what is left to the stock
service on every call.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import tether
import tether.grpc
from tether.http import TetherMiddleware

STOCK_TARGET = os.environ.get("STOCK_TARGET", "127.0.0.1:50051")
channels: dict[str, object] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with tether.grpc.insecure_channel(STOCK_TARGET) as channel:  # passes the budget on
        channels["stock"] = channel.unary_unary("/demo.Stock/Check")
        yield


app = FastAPI(lifespan=lifespan)
app.add_middleware(TetherMiddleware, default_budget=2.0, max_budget=10.0)  # the budget


@app.get("/orders/{order_id}")
async def get_order(order_id: str) -> dict[str, object]:
    received = tether.time_remaining() or 0.0
    check = channels["stock"]
    stock = await check(order_id.encode())  # type: ignore[operator]
    return {
        "order": order_id,
        "stock": stock.decode(),
        "request_id": tether.current_request_id(),
        "budget_received_ms": round(received * 1000),
    }
