"""Running the gateway: listeners, worker processes, the admin listener, and a graceful stop.

- One process per worker, all listening on the same port with SO_REUSEPORT; the kernel spreads
  connections between them. The gateway keeps no state between requests, so workers and
  replicas need nothing from each other.
- With one worker, that process also serves the admin listener. With `--workers N` a
  supervisor process serves it: workers write their metrics snapshot and readiness to a
  private folder every second, and the supervisor sums them (metrics.py).
- SIGTERM or SIGINT: `/readyz` turns 503, stop accepting, close idle keep-alive connections,
  let requests in flight finish for up to `DRAIN_SECONDS`, then exit.
- A worker that exits before that is replaced by the supervisor (`_supervise`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from tether.gateway.admin import start_admin
from tether.gateway.config import Config
from tether.gateway.metrics import SNAPSHOT_SECONDS, merge, read_snapshots, write_snapshot
from tether.gateway.proxy import ClientConnection, Gateway

log = logging.getLogger("tether.gateway")

DRAIN_SECONDS = 20.0


def check_startable(config: Config) -> None:
    """Fail before listening when the auth keys cannot be loaded (AuthSetupError)."""
    if config.auth is not None:
        from tether.gateway.auth import TokenVerifier

        TokenVerifier(config.auth)


class _ProcessView:
    """The admin view of a gateway running in this process."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config

    def ready(self) -> tuple[bool, str]:
        if self.gateway.draining:
            return False, "draining"
        if not self.gateway.listening:
            return False, "starting"
        return True, ""

    def metrics(self) -> dict[str, Any] | None:
        metrics = self.gateway.metrics
        return metrics.snapshot() if metrics is not None else None


async def serve(
    config: Config,
    *,
    reuse_port: bool = False,
    admin: bool = True,
    report_to: Path | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    gateway = Gateway(config, loop=loop)
    admin_server = await start_admin(_ProcessView(gateway)) if admin else None
    server = await loop.create_server(
        lambda: ClientConnection(gateway),
        config.listen.host,
        config.listen.port,
        reuse_port=reuse_port or None,
        backlog=2048,
    )
    gateway.listening = True
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if config.auth is None:
        log.warning(
            "no auth configured: X-User-ID is trusted as sent; this mode trusts the network"
        )
    log.info("tether gateway listening on %s (admin %s)", config.listen, config.admin_listen)
    reporter = loop.create_task(_report(gateway, report_to)) if report_to is not None else None
    if started is not None:
        started()
    await stop.wait()
    await drain(server, gateway)  # /readyz answers 503 meanwhile
    if admin_server is not None:
        admin_server.close()
    if reporter is not None:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        _write_report(gateway, report_to)


async def _report(gateway: Gateway, folder: Path | None) -> None:
    """A worker's snapshot for its supervisor, every SNAPSHOT_SECONDS."""
    while True:
        _write_report(gateway, folder)
        await asyncio.sleep(SNAPSHOT_SECONDS)


def _write_report(gateway: Gateway, folder: Path | None) -> None:
    if folder is None:
        return
    snapshot = gateway.metrics.snapshot() if gateway.metrics is not None else {}
    snapshot["ready"] = gateway.listening and not gateway.draining
    with contextlib.suppress(OSError):
        write_snapshot(folder, snapshot)


async def drain(server: asyncio.Server, gateway: Gateway) -> None:
    """Stop accepting; close idle connections; wait for requests in flight, then close all."""
    gateway.draining = True
    server.close()
    for connection in list(gateway.connections):
        if connection.task is None and connection.transport is not None:
            connection.transport.close()
    if gateway.in_flight:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                await gateway.idle.wait()
    for connection in list(gateway.connections):
        if connection.transport is not None:
            connection.transport.close()
    for pool in gateway.pools:
        pool.close()
    gateway.flush_access_log()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1):
            await server.wait_closed()


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def _run_loop(main: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - the gateway extra installs it
        asyncio.run(main)
    else:
        uvloop.run(main)


def _run_worker(config: Config, report_to: str) -> None:
    _logging()
    _run_loop(serve(config, reuse_port=True, admin=False, report_to=Path(report_to)))


def run(config: Config, workers: int = 1) -> int:
    """Run the gateway in `workers` processes; returns the exit status."""
    check_startable(config)
    _logging()
    if workers == 1:
        _run_loop(serve(config))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="tether-gateway-"))
    try:
        context = multiprocessing.get_context("spawn")

        def start_worker() -> BaseProcess:
            child = context.Process(target=_run_worker, args=(config, str(folder)), daemon=False)
            child.start()
            return child

        children = [start_worker() for _ in range(workers)]
        _run_loop(_supervise(config, children, folder, start_worker))
        return max((child.exitcode or 0) for child in children)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _WorkersView:
    """The admin view of N workers: ready when every one is, metrics summed."""

    def __init__(self, config: Config, children: Sequence[BaseProcess], folder: Path) -> None:
        self.config = config
        self.children = children
        self.folder = folder
        self.draining = False

    def _pids(self) -> list[int]:
        return [c.pid for c in self.children if c.pid is not None and c.is_alive()]

    def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        pids = self._pids()
        if len(pids) < len(self.children):
            return False, f"{len(self.children) - len(pids)} worker(s) not running"
        reports = read_snapshots(self.folder, pids)
        if len(reports) < len(pids) or not all(r.get("ready") for r in reports):
            return False, "workers starting"
        return True, ""

    def metrics(self) -> dict[str, Any] | None:
        if not self.config.metrics:
            return None
        return merge(read_snapshots(self.folder, self._pids()))


# How often the supervisor looks for workers that have exited, and the least time between two
# starts of the same worker slot (a worker that dies at once is not restarted in a tight loop).
WATCH_WORKERS_SECONDS = 0.2
RESTART_EVERY_SECONDS = 1.0


async def _supervise(
    config: Config,
    children: list[BaseProcess],
    folder: Path,
    start_worker: Callable[[], BaseProcess],
) -> None:
    """Serve the admin listener, restart workers that exit before a stop is asked for, and
    pass signals on until every worker has exited.

    Rule: until SIGTERM/SIGINT, the supervisor keeps `len(children)` workers running: a worker
    that exits (a crash, the kernel's OOM killer) is replaced, at most once per
    `RESTART_EVERY_SECONDS` per slot; `/readyz` is 503 until the replacement reports ready.
    `children` is updated in place, so the admin view and the signal handler see the current
    workers.
    """
    loop = asyncio.get_running_loop()
    view = _WorkersView(config, children, folder)
    admin_server = await start_admin(view)

    def forward(signum: int) -> None:
        view.draining = True
        for child in children:
            if child.pid is not None and child.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, forward, signum)
    started = [loop.time()] * len(children)
    while not view.draining:
        await asyncio.sleep(WATCH_WORKERS_SECONDS)
        for slot, child in enumerate(children):
            if view.draining or child.is_alive():
                continue
            if loop.time() - started[slot] < RESTART_EVERY_SECONDS:
                continue
            log.error(
                "worker %s exited with %s; starting another in its place", child.pid, child.exitcode
            )
            children[slot] = start_worker()
            started[slot] = loop.time()
    await asyncio.gather(*(loop.run_in_executor(None, child.join) for child in children))
    admin_server.close()
    log.info("all %d workers exited: %s", len(children), json.dumps([c.exitcode for c in children]))
