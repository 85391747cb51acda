"""Real servers on loopback for integration tests: uvicorn and hypercorn in the test's own event
loop, the gateway as a process, and what the small raw test upstreams share (the request
reader, an upstream that answers broken HTTP)."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import hypercorn.asyncio
import hypercorn.config
import pytest
import uvicorn

from tether.demo.chain import free_port

App = Callable[[Any, Any, Any], Awaitable[None]]


@asynccontextmanager
async def uvicorn_server(app: App, *, http: str = "h11") -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in this loop; yields its base URL."""
    async with uvicorn_serving(app, http=http) as (url, _):
        yield url


@asynccontextmanager
async def uvicorn_serving(
    app: App, *, http: str = "h11", tls_pem: Path | None = None, root_path: str = ""
) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Like `uvicorn_server`, also yielding the server (to look at its open connections).
    `tls_pem`: a file with the private key and certificate chain; the server then speaks
    HTTPS (the URL is https://localhost:PORT). `root_path`: uvicorn's `--root-path` (a proxy
    in front took that prefix off)."""
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
        root_path=root_path,
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
    """A small upstream on loopback written with asyncio streams: its port, the requests it
    has read, and how many connections it accepted."""

    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0


@dataclass
class Reply:
    """What a raw upstream writes for one request: after `delay` seconds, `parts`, `pause`
    seconds apart; then it closes the connection if `close`, else reads the next request."""

    parts: list[bytes]
    pause: float = 0.0
    close: bool = False
    delay: float = 0.0


@asynccontextmanager
async def raw_upstream(reply: Callable[[dict[str, Any]], Reply]) -> AsyncIterator[RawUpstream]:
    """An upstream that answers each request it reads with `reply(request)`, byte for byte
    (valid HTTP or not)."""
    upstream = RawUpstream()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream.connections += 1
        connection = upstream.connections
        try:
            while True:
                request = await read_request(reader)
                request["connection"] = connection  # which of the upstream's connections
                upstream.seen.append(request)
                answer = reply(request)
                if answer.delay:
                    await asyncio.sleep(answer.delay)
                for number, part in enumerate(answer.parts):
                    if number and answer.pause:
                        await asyncio.sleep(answer.pause)
                    writer.write(part)
                    await writer.drain()
                if answer.close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()


def broken_upstream(answer: bytes) -> AbstractAsyncContextManager[RawUpstream]:
    """An upstream that reads a request, writes `answer` (not a whole valid HTTP response) and
    closes the connection."""
    return raw_upstream(lambda _: Reply([answer], close=True))


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


# -- a gateway process with a configuration of the test's own, and calls through it --

RID = "5b0c6a52-3d2e-4c4e-9a53-8d8f3cd1a1f0"
GOOD = {"X-Request-ID": RID, "X-App-ID": "checkout-web", "X-User-ID": "42"}


@dataclass
class Running:
    url: str
    admin: str
    process: asyncio.subprocess.Process
    log_path: Path

    def access_log(self) -> list[dict[str, Any]]:
        return read_access_log(self.log_path)


@asynccontextmanager
async def gateway(
    tmp_path: Path, body: str, *, workers: int = 1, env: dict[str, str] | None = None
) -> AsyncIterator[Running]:
    """A gateway process with `body` (services and more) under a common head; ready on exit."""
    port, admin = free_port(), free_port()
    config = tmp_path / f"gateway-{port}.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\nadmin: {{listen: 127.0.0.1:{admin}}}\nzone: zone-a\n"
        "conventions: {request_id: require, app_ids: [checkout-web]}\n" + body
    )
    log_path = tmp_path / f"access-{port}.log"
    process = await spawn_gateway(config, log_path, "--workers", str(workers), env=env)
    running = Running(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", process, log_path)
    try:
        try:
            await wait_until(lambda: admin_get(running, "/readyz"), lambda r: r[0] == 200, 15)
        except AssertionError:
            pytest.fail(f"the gateway did not get ready: {gateway_stderr(log_path).read_text()}")
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)


async def admin_get(running: Running, path: str, method: str = "GET") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, running.admin + path) as answer,
    ):
        return answer.status, await answer.text()


async def call(
    running: Running,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    session: aiohttp.ClientSession | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, str], Any]:
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.request(
            kwargs.pop("method", "GET"), running.url + path, headers=headers or GOOD, **kwargs
        ) as answer:
            body = await answer.read()
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = body
            return answer.status, dict(answer.headers), parsed
    finally:
        if own:
            await session.close()


def service(name: str, *endpoints: tuple[RawUpstream, str], extra: str = "") -> str:
    lines = [f"  {name}:", "    versions: [v1]", "    endpoints:"]
    lines += [f"      - {{address: 127.0.0.1:{u.port}, zone: {zone}}}" for u, zone in endpoints]
    if extra:
        lines.append(f"    {extra}")
    return "\n".join(lines) + "\n"
