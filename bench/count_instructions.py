"""User-space CPU instructions per request of the hello-world apps under uvicorn, counted by
valgrind's callgrind: exact and repeatable, unlike timings on a shared machine.

    .venv/bin/python bench/count_instructions.py [requests]

Each app (`bench/apps/hello.py`: plain, headers_only, with_tether) runs under callgrind with
counting switched off; a client outside valgrind warms it up with 200 requests, counting is
switched on for the measured requests (50 keep-alive connections), then off again. Needs
valgrind (`apt-get install valgrind`). Prints one line per app.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

from bench_toolkit import BENCH, free_port, uvicorn

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CONTENT_LENGTH = re.compile(rb"content-length: (\d+)", re.IGNORECASE)


async def drive(port: int, requests: int, connections: int = 50) -> None:
    async def one_connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = CONTENT_LENGTH.search(head)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
        writer.close()

    await asyncio.gather(*(one_connection(requests // connections) for _ in range(connections)))


def instructions_per_request(app: str, requests: int) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "callgrind.out")
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                *uvicorn(app, port),
            ],
            cwd=BENCH,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            asyncio.run(drive(port, 200))
            subprocess.run(
                ["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True
            )
            asyncio.run(drive(port, requests))
            subprocess.run(
                ["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True
            )
        finally:
            server.terminate()
            _, errors = server.communicate(timeout=60)
    collected = re.search(r"Collected : (\d+)", errors)
    assert collected is not None, errors[-2000:]
    return int(collected.group(1)) / requests


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    plain = instructions_per_request("apps.hello:plain", requests)
    print(f"plain Starlette hello:              {plain:10,.0f} instructions/request")
    for label, app in (
        ("+ the two response headers only:   ", "apps.hello:headers_only"),
        ("+ TetherMiddleware:                ", "apps.hello:with_tether"),
    ):
        count = instructions_per_request(app, requests)
        print(f"{label} {count:10,.0f} instructions/request ({plain / count:.3f} of plain)")


if __name__ == "__main__":
    main()
