"""Real servers on loopback for integration tests: uvicorn in the test's own event loop."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

App = Callable[[Any, Any, Any], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def uvicorn_server(app: App, *, http: str = "h11") -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in this loop; yields its base URL."""
    async with uvicorn_serving(app, http=http) as (url, _):
        yield url


@asynccontextmanager
async def uvicorn_serving(
    app: App, *, http: str = "h11"
) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Like `uvicorn_server`, also yielding the server (to look at its open connections)."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        loop="asyncio",
        http=http,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def json_response(send: Any, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def echo_headers_app(counter: list[int] | None = None, delay: float = 0.0) -> App:
    """An app that answers with the request's headers as JSON, after `delay` seconds."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if counter is not None:
            counter.append(1)
        if delay:
            await asyncio.sleep(delay)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        await json_response(send, 200, headers)

    return app
