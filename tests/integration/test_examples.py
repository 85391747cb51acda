"""The examples run as real processes: FastAPI under uvicorn calling the grpc.aio service."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from .servers import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def process(*argv: str, env: dict[str, str] | None = None) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def wait_for_port(port: int) -> None:
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.parametrize(
    ("delay", "budget_ms", "status"), [("0.05", "800", 200), ("2", "300", 504)]
)
async def test_fastapi_example_calls_the_grpc_example(
    delay: str, budget_ms: str, status: int
) -> None:
    """A fast stock check answers 200 with the budget passed on; a slow one gives a 504
    problem at the budget."""
    grpc_port, http_port = free_port(), free_port()
    async with (
        process(
            sys.executable, "examples/grpc_service.py", "--port", str(grpc_port), "--delay", delay
        ),
        process(
            sys.executable,
            "-m",
            "uvicorn",
            "examples.fastapi_service:app",
            "--port",
            str(http_port),
            "--log-level",
            "warning",
            env={"STOCK_TARGET": f"127.0.0.1:{grpc_port}"},
        ),
    ):
        await wait_for_port(grpc_port)
        await wait_for_port(http_port)
        async with aiohttp.ClientSession() as client:
            url = f"http://127.0.0.1:{http_port}/orders/42"
            headers = {"x-request-timeout": budget_ms, "x-request-id": "example-1"}
            async with client.get(url, headers=headers) as answer:
                body = await answer.json(content_type=None)
    assert answer.status == status
    assert answer.headers["x-request-id"] == "example-1"
    if status == 200:
        assert body["request_id"] == "example-1"
        assert 700 < body["budget_received_ms"] <= 800
        assert "in stock" in body["stock"]
    else:
        assert body["type"].endswith("deadline-exceeded")
