"""httpx's pool after cancellation churn, with and without tether's transport (httpcore#1093).

    .venv/bin/python bench/httpx_cancel_churn.py        # prints and updates docs/benchmarks.md

For each transport: 20 concurrent GETs at a time to a local server through a pool of 4
connections (no keep-alive, so new connections keep being made), each inside a tether deadline
of 8-28 ms so that many are cancelled at every stage, for a fixed time. Then: what the pool
holds, and whether 10 more requests succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time

import httpcore
import httpx

from _report import machine, write_section
from tether import DeadlineExceeded, deadline_after
from tether.http.httpx_transport import TetherTransport


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                head += chunk
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()


async def run(kind: str, seconds: float) -> tuple[str, int, int, str]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    inner = httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=0)
    )
    transport: httpx.AsyncBaseTransport = TetherTransport(inner) if kind == "tether" else inner
    cancelled = 0

    async def one() -> None:
        nonlocal cancelled
        try:
            async with deadline_after(0.008 + random.random() * 0.02):
                await client.get(url)
        except (DeadlineExceeded, httpx.HTTPError):
            cancelled += 1

    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(2, pool=1)) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.gather(*(one() for _ in range(20)))
        pool = repr(inner._pool).replace("|", "\\|")
        ok = 0
        for _ in range(10):
            with contextlib.suppress(httpx.HTTPError):
                ok += (await client.get(url)).status_code == 200
    server.close()
    await server.wait_closed()
    return pool, cancelled, ok, kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rows = [asyncio.run(run(kind, args.seconds)) for kind in ("plain", "tether")]
    lines = [
        "| transport | requests ended by the deadline | pool afterwards | of 10 later requests |",
        "|---|---:|---|---:|",
    ]
    for pool, cancelled, ok, kind in rows:
        name = "`httpx.AsyncHTTPTransport`" if kind == "plain" else "`TetherTransport`"
        lines.append(f"| {name} | {cancelled} | `{pool}` | {ok} succeeded |")
    body = f"""## httpx pool after cancellation churn (`bench/httpx_cancel_churn.py`)

Reproduce: `.venv/bin/python bench/httpx_cancel_churn.py`. Machine: {machine()}.
{args.seconds:.0f} s of 20 concurrent GETs through a 4-connection pool, each under a tether
deadline of 8-28 ms (httpcore {httpcore.__version__}).

{chr(10).join(lines)}

Without tether's transport the pool ends full of connections that no request owns
(encode/httpcore#1093) and every later request fails with `PoolTimeout` against a healthy
server. `TetherTransport` reclaims those connections and shields httpcore's response close from
cancellation, so the pool ends empty and keeps serving.
"""
    print(body)
    write_section("httpx-churn", body)


if __name__ == "__main__":
    main()
