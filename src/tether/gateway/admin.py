"""The admin listener: `/healthz`, `/readyz`, `/metrics` and `/config`, on its own address.

Rules:
1. It listens on `admin.listen` (loopback unless configured otherwise), never on the data
   port, so the internet-facing listener exposes none of it.
2. `/healthz` is 200 while the process runs. `/readyz` is 200 only once the configuration is
   loaded and every listener is up, and 503 from the moment draining starts, so a load balancer
   stops sending new requests before the process goes away.
3. `/metrics` is the Prometheus text format; with `--workers N` it is the sum of every worker.
4. `/config` is the effective configuration as JSON. Secrets never appear in it: the gateway
   reads them from environment variables, and only the variables' names are shown.
5. Every answer closes its connection; a request that is malformed or slower than
   `READ_SECONDS` gets 400 or is dropped. Only GET and HEAD are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import Any, Protocol

from tether.gateway.config import Config
from tether.gateway.metrics import render

READ_SECONDS = 5.0
MAX_HEAD_BYTES = 8192


class AdminView(Protocol):
    """What the admin listener shows: one process's state, or the sum of the workers'."""

    def ready(self) -> tuple[bool, str]: ...

    def metrics(self) -> dict[str, Any] | None: ...

    @property
    def config(self) -> Config: ...


def config_document(config: Config) -> dict[str, Any]:
    """The effective configuration as plain JSON-able data (rule 4)."""
    document = dataclasses.asdict(config)
    document["listen"] = str(config.listen)
    document["admin_listen"] = str(config.admin_listen)
    for service in document["services"].values():
        for endpoint in service["endpoints"]:
            address = endpoint["address"]
            endpoint["address"] = f"{address['host']}:{address['port']}"
    auth = document.get("auth")
    if auth is not None and auth.get("secret_env"):
        auth["secret_env"] = f"{auth['secret_env']} (the variable's name; its value is not shown)"
    return document


async def start_admin(view: AdminView) -> asyncio.Server:
    address = view.config.admin_listen

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, content_type, body, head_only = await _answer(view, reader)
            head = (
                f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            ).encode()
            writer.write(head if head_only else head + body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a client that stalls or leaves gets nothing
        finally:
            writer.close()

    return await asyncio.start_server(
        handle, address.host, address.port, limit=MAX_HEAD_BYTES, reuse_address=True
    )


async def _answer(view: AdminView, reader: asyncio.StreamReader) -> tuple[str, str, bytes, bool]:
    async with asyncio.timeout(READ_SECONDS):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return (
                "431 Request Header Fields Too Large",
                "text/plain",
                b"headers too large\n",
                False,
            )
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return "400 Bad Request", "text/plain", b"malformed request line\n", False
    method, target = parts[0], parts[1]
    head_only = method == b"HEAD"
    if method not in (b"GET", b"HEAD"):
        return "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n", False
    path = target.split(b"?", 1)[0]
    if path == b"/healthz":
        return "200 OK", "text/plain", b"ok\n", head_only
    if path == b"/readyz":
        ready, why = view.ready()
        if ready:
            return "200 OK", "text/plain", b"ready\n", head_only
        return "503 Service Unavailable", "text/plain", f"not ready: {why}\n".encode(), head_only
    if path == b"/metrics":
        snapshot = view.metrics()
        if snapshot is None:
            return "404 Not Found", "text/plain", b"metrics are off (observability)\n", head_only
        return "200 OK", "text/plain; version=0.0.4; charset=utf-8", render(snapshot), head_only
    if path == b"/config":
        body = json.dumps(config_document(view.config), indent=2).encode() + b"\n"
        return "200 OK", "application/json", body, head_only
    return "404 Not Found", "text/plain", b"try /healthz, /readyz, /metrics or /config\n", False
