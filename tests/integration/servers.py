"""Real servers on loopback for integration tests: uvicorn and hypercorn in the test's own event
loop, the gateway as a process, and what the small raw test upstreams share (the request
reader, an upstream that answers broken HTTP)."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import hypercorn.asyncio
import hypercorn.config
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
    app: App, *, http: str = "h11", tls_pem: Path | None = None
) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Like `uvicorn_server`, also yielding the server (to look at its open connections).
    `tls_pem`: a file with the private key and certificate chain; the server then speaks
    HTTPS (the URL is https://localhost:PORT)."""
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
        ssl_certfile=tls_pem,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        scheme_host = "http://127.0.0.1" if tls_pem is None else "https://localhost"
        yield f"{scheme_host}:{port}", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def hypercorn_server(app: App) -> AsyncIterator[str]:
    """Serve `app` with hypercorn on 127.0.0.1 in this loop; yields its base URL. It speaks
    HTTP/1.1, and HTTP/2 to clients that open with it (h2c, prior knowledge)."""
    port = free_port()
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    config.graceful_timeout = 1
    stop = asyncio.Event()
    task = asyncio.create_task(hypercorn.asyncio.serve(app, config, shutdown_trigger=stop.wait))
    if not await listening(port, 5, stopped=task.done):
        if task.done():
            task.result()  # hypercorn's own error
        raise AssertionError(f"hypercorn did not listen on {port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
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
    """An app that answers with the request's headers as JSON, after `delay` seconds; a
    repeated header's values are joined with ", " (as HTTP reads a repeated header)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if counter is not None:
            counter.append(1)
        if delay:
            await asyncio.sleep(delay)
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode()
            headers[key] = f"{headers[key]}, {value.decode()}" if key in headers else value.decode()
        await json_response(send, 200, headers)

    return app


async def read_request(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One HTTP/1.1 request off a raw stream, for the small upstreams the gateway tests run:
    method, target, lowercased headers, body (Content-Length or chunked), arrival time."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {
        k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
    }
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while (size := int((await reader.readline()).strip(), 16)) > 0:
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
    return {
        "method": method,
        "target": target,
        "headers": headers,
        "body": body.decode(),
        "at": time.monotonic(),
    }


async def raw_exchange(port: int, data: bytes, *, wait: float = 2.0) -> tuple[bytes, bool]:
    """Send raw bytes to 127.0.0.1:`port` on a new connection; return what came back and
    whether the other side closed the connection within `wait` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    received = b""
    closed = False
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                received += chunk
            closed = True
    except TimeoutError:
        pass
    writer.close()
    return received, closed


@dataclass
class RawUpstream:
    """A small upstream on loopback written with asyncio streams: its port and the requests it
    has read."""

    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)


@asynccontextmanager
async def broken_upstream(answer: bytes) -> AsyncIterator[RawUpstream]:
    """An upstream that reads a request, writes `answer` (not a whole valid HTTP response) and
    closes the connection."""
    upstream = RawUpstream()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream.seen.append(await read_request(reader))
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()


def fuzz_seed() -> int:
    """The seed of the tests that send random bad input: `TETHER_FUZZ_SEED`, or a fixed one, so
    that a failure can be replayed (each such test names its seed when it fails)."""
    return int(os.environ.get("TETHER_FUZZ_SEED", "20261125"))


# What a loaded CI machine may add to a deadline before a thread, the event loop or a client
# notices it, in tests of work that would otherwise run on for seconds: it still tells "stopped
# at the deadline" from "ran to the end". (The issue's tight figures for async handlers are
# asserted as they are, in test_failure_cases.py.)
LATE = 0.1


async def listening(
    port: int, seconds: float, *, stopped: Callable[[], bool] = lambda: False
) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port` within `seconds`; False at
    once when `stopped()` (the server's process or task has ended)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if stopped() or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        else:
            writer.close()
            await writer.wait_closed()
            return True


async def wait_until(probe: Callable[[], Any], done: Callable[[Any], bool], seconds: float) -> Any:
    """Call `probe()` (awaiting what it returns, if awaitable) every 50 ms until
    `done(result)`; return that result. An aiohttp error counts as not done yet (a server
    still starting); after `seconds`, AssertionError."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = probe()
            if inspect.isawaitable(result):
                result = await result
            if done(result):
                return result
        except aiohttp.ClientError:
            result = None
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {seconds} s: last {result!r}")
        await asyncio.sleep(0.05)


def read_access_log(log_path: Path) -> list[dict[str, Any]]:
    """The JSON lines a gateway started by `spawn_gateway` has written to its access log."""
    return [json.loads(line) for line in log_path.read_text().splitlines() if line]


async def spawn_gateway(
    config: Path, log_path: Path, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`tether gateway CONFIG ARGS` as a real process, its access log (stdout) in `log_path`
    and its stderr in `gateway_stderr(log_path)` (read when it fails to start)."""
    with log_path.open("w") as log_file, gateway_stderr(log_path).open("w") as err_file:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tether.cli",
            "gateway",
            str(config),
            *args,
            stdout=log_file,
            stderr=err_file,
            env={**os.environ, **(env or {})} if env else None,
        )


def gateway_stderr(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".stderr")
