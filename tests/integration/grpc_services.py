"""Real grpc.aio servers on loopback for integration tests (raw bytes, no generated code)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio

import tether.grpc

SERVICE = "test.Echo"


@asynccontextmanager
async def grpc_server(
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    **budget: float,
) -> AsyncIterator[str]:
    """A tether-wrapped grpc.aio server with `handlers` under `SERVICE`; yields its target."""
    server = tether.grpc.server(interceptors=interceptors, **budget)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"
