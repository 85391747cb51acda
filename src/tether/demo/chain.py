"""The whole chain on loopback: client -> tether gateway -> orders (FastAPI) -> inventory
(grpc.aio) -> PostgreSQL, each service in its own process; or the same services without
tether (the client calls the orders service directly, as nothing in front of it would pass a
budget on anyway).

`running_chain` starts and stops it (the benchmark and the integration test use it);
`show_chain` is the part of `tether demo` that prints ready-to-paste curl commands and what
each one answered.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GATEWAY_CONFIG = """\
# The demo's gateway: one service, the calling conventions on, a 3 s default budget.
listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
zone: demo
deadline: {{default: 3s, max: 30s, margin: 5ms}}
conventions:
  request_id: require
  app_ids: [demo-cli, checkout-web]
services:
  orders:
    versions: [v1]
    endpoints:
      - address: 127.0.0.1:{orders}
"""


@dataclass
class Chain:
    tethered: bool
    dsn: str
    entry: str  # where clients send requests: the gateway, or the orders service directly
    orders: str
    inventory: str
    admin: str | None
    folder: Path
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)

    def path(self, rest: str) -> str:
        """The URL of `rest` (like `/orders/42`) as a client of this chain sends it."""
        return f"{self.entry}/api/orders/v1{rest}" if self.tethered else f"{self.entry}/v1{rest}"

    async def events(self) -> dict[str, Any]:
        """What each hop recorded: when its work for each request ended, and tasks alive."""
        import aiohttp
        import grpc.aio

        async with aiohttp.ClientSession() as session, session.get(self.orders + "/_events") as r:
            orders = await r.json()
        async with grpc.aio.insecure_channel(self.inventory) as channel:
            ask: Any = channel.unary_unary("/demo.Inventory/Events")
            answer = await ask(b"{}", timeout=5)
        return {"orders": orders, "inventory": json.loads(answer)}


# Ports this process has handed out. The kernel may give the same free port to two binds in a
# row (seen: a gateway's listen and admin ports were one port), so a port is handed out once.
_HANDED_OUT: set[int] = set()


def free_port(preferred: int | None = None) -> int:
    """`preferred` when nothing listens there, else any free port; never a port this process
    was handed before (the demo, the benchmarks and the tests all choose ports here)."""
    for port in ([preferred] if preferred else []) + [0] * 100:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen = int(sock.getsockname()[1])
        if chosen not in _HANDED_OUT:
            _HANDED_OUT.add(chosen)
            return chosen
    raise RuntimeError("no free port")  # pragma: no cover


async def _wait_for_port(port: int, process: asyncio.subprocess.Process, what: str) -> None:
    for _ in range(600):
        if process.returncode is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within 30 s")


@asynccontextmanager
async def running_chain(
    dsn: str, *, tethered: bool = True, gateway_port: int | None = None
) -> AsyncIterator[Chain]:
    """Start inventory, orders and (with tether) the gateway; stop them all on exit."""
    folder = Path(tempfile.mkdtemp(prefix="tether-chain-"))
    plain = [] if tethered else ["--plain"]
    inventory_port, orders_port = free_port(), free_port()
    chain = Chain(
        tethered=tethered,
        dsn=dsn,
        entry=f"http://127.0.0.1:{orders_port}",
        orders=f"http://127.0.0.1:{orders_port}",
        inventory=f"127.0.0.1:{inventory_port}",
        admin=None,
        folder=folder,
    )
    python = sys.executable

    async def start(log: str, *argv: str, stdout: str | None = None) -> asyncio.subprocess.Process:
        out = (folder / stdout).open("wb") if stdout else None
        with (folder / log).open("wb") as err:  # the child keeps its own copy of each file
            process = await asyncio.create_subprocess_exec(
                python,
                "-m",
                *argv,
                stdout=out or asyncio.subprocess.DEVNULL,
                stderr=err,
            )
        if out is not None:
            out.close()
        chain.processes.append(process)
        return process

    try:
        inventory = await start(
            "inventory.log",
            *("tether.demo.inventory", "--port", str(inventory_port), "--dsn", dsn, *plain),
        )
        orders = await start(
            "orders.log",
            *("tether.demo.orders", "--port", str(orders_port), "--inventory", chain.inventory),
            *plain,
        )
        await _wait_for_port(inventory_port, inventory, "the inventory service")
        await _wait_for_port(orders_port, orders, "the orders service")
        if tethered:
            port, admin = free_port(gateway_port), free_port()
            config = folder / "gateway.yaml"
            config.write_text(GATEWAY_CONFIG.format(port=port, admin=admin, orders=orders_port))
            gateway = await start(
                "gateway.log", "tether.cli", "gateway", str(config), stdout="access.log"
            )
            await _wait_for_port(port, gateway, "the gateway")
            chain.entry = f"http://127.0.0.1:{port}"
            chain.admin = f"http://127.0.0.1:{admin}"
        yield chain
    finally:
        for process in reversed(chain.processes):
            if process.returncode is None:
                process.terminate()
        for process in chain.processes:
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:  # pragma: no cover - a stuck service
                process.kill()
                await process.wait()
        shutil.rmtree(folder, ignore_errors=True)


DEMO_HEADERS = {
    "X-Request-ID": "5b0c6a52-3d2e-4c4e-9a53-8d8f3cd1a1f0",
    "X-App-ID": "demo-cli",
    "X-User-ID": "42",
}


def _case(
    what: str, path: str, headers: dict[str, str], *, method: str = "GET", body: str = ""
) -> dict[str, Any]:
    return {"what": what, "path": path, "headers": headers, "method": method, "body": body}


def demo_cases() -> list[dict[str, Any]]:
    """The requests `tether demo` shows: a success, each refusal, a 504, a rewritten error."""
    good = DEMO_HEADERS
    budget = {**good, "X-Request-Timeout": "300"}
    without = {k: v for k, v in good.items() if k != "X-Request-ID"}
    return [
        _case("a fast order (300 ms budget, 10 ms query)", "/api/orders/v1/orders/42", budget),
        _case(
            "a slow order: its 5 s query outlives the 300 ms budget",
            "/api/orders/v1/orders/43?query_ms=5000",
            budget,
        ),
        _case("no X-Request-ID", "/api/orders/v1/orders/42", without),
        _case(
            "an X-Request-ID that is not a UUID",
            "/api/orders/v1/orders/42",
            {**good, "X-Request-ID": "abc"},
        ),
        _case(
            "no X-App-ID",
            "/api/orders/v1/orders/42",
            {k: v for k, v in good.items() if k != "X-App-ID"},
        ),
        _case("an app not allowed", "/api/orders/v1/orders/42", {**good, "X-App-ID": "stranger"}),
        _case(
            "no X-User-ID (no auth configured)",
            "/api/orders/v1/orders/42",
            {k: v for k, v in good.items() if k != "X-User-ID"},
        ),
        _case(
            "a body that is not JSON",
            "/api/orders/v1/orders",
            {**good, "Content-Type": "text/plain"},
            method="POST",
            body="hello",
        ),
        _case(
            "a version in a header, not the path",
            "/api/orders/orders/42",
            {**good, "Api-Version": "v1"},
        ),
        _case(
            "an invalid deadline header",
            "/api/orders/v1/orders/42",
            {**good, "X-Request-Timeout": "soon"},
        ),
        _case("an upstream error that is not a problem", "/api/orders/v1/broken", good),
    ]


def curl_command(base: str, case: dict[str, Any]) -> str:
    parts = ["curl", "-s"]
    if case["method"] != "GET":
        parts += ["-X", case["method"]]
    for name, value in case["headers"].items():
        parts += ["-H", f"'{name}: {value}'"]
    if case["body"]:
        parts += ["--data", f"'{case['body']}'"]
    parts.append(f"'{base}{case['path']}'")
    return " ".join(parts)


async def show_chain(dsn: str, *, wait: bool) -> None:
    """Start the chain, print each curl command and its answer, show PostgreSQL is idle."""
    import aiohttp

    from tether.postgres.activity import long_running

    print(
        "\nthe chain: client -> tether gateway -> orders (FastAPI) -> inventory (grpc.aio) "
        "-> PostgreSQL",
        flush=True,
    )
    async with running_chain(dsn, tethered=True, gateway_port=8080) as chain:
        print(f"gateway on {chain.entry} (admin: {chain.admin}/metrics)\n", flush=True)
        async with aiohttp.ClientSession() as session:
            for case in demo_cases():
                print(f"# {case['what']}")
                print(curl_command(chain.entry, case))
                started = time.monotonic()
                async with session.request(
                    case["method"],
                    chain.entry + case["path"],
                    headers=case["headers"],
                    data=case["body"] or None,
                ) as answer:
                    text = await answer.text()
                took = (time.monotonic() - started) * 1000
                print(f"  -> {answer.status} in {took:.0f} ms: {_short(text)}\n", flush=True)
        await asyncio.sleep(0.1)
        running = [s for s in await long_running(dsn, 0.05) if "pg_sleep" in s.query]
        print(
            f"PostgreSQL statements still running after the slow order: {len(running)} "
            f"(check yourself: tether pg activity --dsn '{dsn}')",
            flush=True,
        )
        if wait:
            print("\nthe chain keeps running for your own curls; Ctrl-C stops it", flush=True)
            await asyncio.Event().wait()  # until Ctrl-C cancels it; the chain stops on the way out


def _short(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text[:160]
    if isinstance(data, dict) and "detail" in data:
        return f"{data.get('title')}: {data['detail']}"[:160]
    return json.dumps(data)[:160]
