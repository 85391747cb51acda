"""tether.http.Client over TLS, on loopback: the connect phase includes the handshake, and the
budget bounds a handshake that never ends.

The upstream is uvicorn speaking HTTPS with a certificate from a test CA (trustme). Between the
client and it runs a TCP proxy that holds each connection's first bytes from the client (the
TLS ClientHello) for a while, or for good: the handshake, and only the handshake, is slow.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

from tether import DeadlineExceeded, UpstreamTimeout, deadline_after
from tether.http import Client

from .servers import LATE, echo_headers_app, uvicorn_serving

pytestmark = pytest.mark.integration

HOLD = 0.2  # how long the proxy holds a ClientHello


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    pem = tmp_path / "localhost.pem"
    ca.issue_cert("localhost", "127.0.0.1", "::1").private_key_and_cert_chain_pem.write_to_path(
        str(pem)
    )
    return pem


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@asynccontextmanager
async def holding_proxy(upstream_port: int, hold: float | None) -> AsyncIterator[int]:
    """A TCP proxy on 127.0.0.1 to `upstream_port`; yields its port. It holds the first bytes
    each client sends for `hold` seconds (None: for good); everything else flows as it comes.
    All its connections are closed when the block ends."""
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, held: bool) -> None:
        try:
            while data := await reader.read(65536):
                if held:
                    held = False
                    if hold is None:
                        await asyncio.Event().wait()  # until the proxy closes
                    else:
                        await asyncio.sleep(hold)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # the other side went away: close this one too
        finally:
            writer.close()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        for task in (
            asyncio.create_task(pipe(reader, up_writer, held=True)),
            asyncio.create_task(pipe(up_reader, writer, held=False)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    proxy = await asyncio.start_server(connected, "127.0.0.1", 0)
    try:
        yield proxy.sockets[0].getsockname()[1]
    finally:
        proxy.close()
        running = list(pipes)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await proxy.wait_closed()


@asynccontextmanager
async def https_upstream(pem: Path, counter: list[int] | None = None) -> AsyncIterator[int]:
    """uvicorn speaking HTTPS with `pem`, answering with the headers it received; its port."""
    async with uvicorn_serving(echo_headers_app(counter), tls_pem=pem) as (url, _):
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG, logger="tether.http.client"):
        yield caplog


async def test_connect_includes_the_tls_handshake(
    server_pem: Path, trusting: ssl.SSLContext, debug_log: pytest.LogCaptureFixture
) -> None:
    """The held ClientHello delays the handshake: `connect` ends after it, name resolution
    before it, and sending the request does not wait for it. A second call reuses the
    connection: no name resolution, no connect. Each call's phases are in the debug log."""
    async with (
        https_upstream(server_pem) as upstream,
        holding_proxy(upstream, HOLD) as port,
        Client() as client,
    ):
        url = f"https://localhost:{port}/"
        async with deadline_after(5):
            first = await client.get(url, ssl=trusting)
            second = await client.get(url, ssl=trusting)
    assert first.status == 200
    assert 4000 < int(first.json()["x-request-timeout"]) <= 5000  # the budget went over TLS
    timings = first.timings
    assert timings.dns is not None
    assert timings.connect is not None
    assert timings.request_sent is not None
    assert timings.dns < HOLD <= timings.connect
    assert timings.connect <= timings.request_sent < timings.connect + HOLD / 2
    assert second.timings.dns is None
    assert second.timings.connect is None
    assert second.timings.body_done is not None
    assert second.timings.body_done < HOLD  # nothing held: the connection was pooled
    lines = [record.getMessage() for record in debug_log.records]
    assert any(url in line and f"connect={timings.connect!r}" in line for line in lines), lines


@pytest.mark.parametrize("bound", ["budget", "explicit timeout"])
async def test_a_handshake_that_never_ends_is_bounded(
    server_pem: Path, trusting: ssl.SSLContext, bound: str
) -> None:
    """The proxy never passes the ClientHello on: the call ends when its budget (or explicit
    timeout) does, with the error that says which, and the upstream never got a request."""
    requests: list[int] = []
    async with (
        https_upstream(server_pem, requests) as upstream,
        holding_proxy(upstream, None) as port,
        Client() as client,
    ):
        url = f"https://localhost:{port}/"
        started = time.monotonic()
        if bound == "budget":
            with pytest.raises(DeadlineExceeded):
                async with deadline_after(0.3):
                    await client.get(url, ssl=trusting)
        else:
            with pytest.raises(UpstreamTimeout):
                async with deadline_after(5):
                    await client.get(url, ssl=trusting, timeout=0.3)
        took = time.monotonic() - started
    assert 0.25 <= took < 0.3 + LATE
    assert requests == []
