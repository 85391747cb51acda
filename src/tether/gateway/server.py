"""Running the gateway: listeners, worker processes, and a graceful stop.

- One process per worker, all listening on the same port with SO_REUSEPORT; the kernel spreads
  connections between them. The gateway keeps no state between requests, so workers and
  replicas need nothing from each other.
- SIGTERM or SIGINT: stop accepting, close idle keep-alive connections, let requests in flight
  finish for up to `DRAIN_SECONDS`, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable

from tether.gateway.config import Config
from tether.gateway.proxy import ClientConnection, Gateway

log = logging.getLogger("tether.gateway")

DRAIN_SECONDS = 20.0


class UnsupportedConfig(ValueError):
    """The configuration asks for something this version of the gateway does not do yet."""


def check_supported(config: Config) -> None:
    if config.auth is not None:
        raise UnsupportedConfig(
            "auth.jwt is not supported by this version of tether gateway yet; remove the "
            "auth section (the gateway then requires X-User-ID and trusts the network)"
        )


async def serve(
    config: Config, *, reuse_port: bool = False, started: Callable[[], None] | None = None
) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return."""
    check_supported(config)
    loop = asyncio.get_running_loop()
    gateway = Gateway(config)
    server = await loop.create_server(
        lambda: ClientConnection(gateway),
        config.listen.host,
        config.listen.port,
        reuse_port=reuse_port or None,
        backlog=2048,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.warning("no auth configured: X-User-ID is trusted as sent; this mode trusts the network")
    log.info("tether gateway listening on %s", config.listen)
    if started is not None:
        started()
    await stop.wait()
    await drain(server, gateway)


async def drain(server: asyncio.Server, gateway: Gateway) -> None:
    """Stop accepting; close idle connections; wait for requests in flight, then close all."""
    gateway.draining = True
    server.close()
    for connection in list(gateway.connections):
        if connection._task is None and connection.transport is not None:
            connection.transport.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            await gateway.idle.wait()
    for connection in list(gateway.connections):
        if connection.transport is not None:
            connection.transport.close()
    for pool in gateway.pools.values():
        pool.close()
    gateway.flush_access_log()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1):
            await server.wait_closed()


def _run_one(config: Config, reuse_port: bool) -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the gateway extra installs it
        asyncio.run(serve(config, reuse_port=reuse_port))
    else:
        uvloop.run(serve(config, reuse_port=reuse_port))


def run(config: Config, workers: int = 1) -> int:
    """Run the gateway in `workers` processes; returns the exit status."""
    check_supported(config)
    if workers == 1:
        _run_one(config, reuse_port=False)
        return 0
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_run_one, args=(config, True), daemon=False) for _ in range(workers)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    return max((child.exitcode or 0) for child in children)
