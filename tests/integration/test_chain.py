"""The end-to-end chain on every CI run: client -> gateway -> FastAPI -> grpc.aio -> PostgreSQL,
each a real process. A few requests whose query outlives the budget: 504 at the budget, every
hop stopped, the PostgreSQL backend idle, no task or connection left behind."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import asyncpg
import pytest

from tether.demo.chain import DEMO_HEADERS, running_chain

from .pg_helpers import active_backends

pytestmark = pytest.mark.integration


async def test_one_budget_stops_every_hop_and_the_query(pg_dsn: str) -> None:
    monitor = await asyncpg.connect(pg_dsn)
    try:
        async with running_chain(pg_dsn) as chain, aiohttp.ClientSession() as session:
            headers = {**DEMO_HEADERS, "X-Request-Timeout": "300"}
            async with session.get(chain.path("/orders/1?query_ms=10"), headers=headers) as r:
                assert r.status == 200
                assert (await r.json())["inventory"]["reserved"] is True
                # One request id on the answer, though orders echoes it too; each hop's time.
                assert r.headers.getall("X-Request-ID") == [DEMO_HEADERS["X-Request-ID"]]
                orders_timing, gateway_timing = r.headers.getall("Server-Timing")
                assert orders_timing.startswith("app;dur=")
                assert gateway_timing.startswith("gateway;dur=")
            baseline = await chain.events()
            tags = [uuid.uuid4().hex[:12] for _ in range(3)]
            sent = time.monotonic()
            deadline = sent + 0.3

            async def slow(tag: str) -> tuple[int, float, str]:
                url = chain.path(f"/orders/{tag}?query_ms=5000&tag={tag}")
                async with session.get(url, headers=headers) as answer:
                    return answer.status, time.monotonic(), answer.headers["Content-Type"]

            answers = await asyncio.gather(*(slow(tag) for tag in tags))
            for status, answered, content_type in answers:
                assert status == 504
                assert content_type == "application/problem+json"
                assert deadline - 0.05 <= answered <= deadline + 0.1
            await asyncio.sleep(max(0.0, deadline + 0.1 - time.monotonic()))
            assert (
                await active_backends(monitor, "inventory") == 0
            )  # the 5 s queries stopped on the server
            events = await chain.events()
            for hop in ("orders", "inventory"):
                ended = {e["tag"]: e for e in events[hop]["events"] if e["tag"] in tags}
                assert set(ended) == set(tags), hop
                for event in ended.values():
                    assert event["ended"] <= deadline + 0.1, (hop, event["ended"] - deadline)
                    assert event["outcome"] != "ok"
                # No task left behind: back to what the service ran before the slow requests.
                assert events[hop]["tasks"] <= baseline[hop]["tasks"], hop
    finally:
        await monitor.close()


async def test_without_tether_the_same_query_runs_on(pg_dsn: str) -> None:
    """The comparison the chain exists for: without tether the client gives up at 300 ms and
    the query keeps its backend busy afterwards."""
    monitor = await asyncpg.connect(pg_dsn)
    try:
        async with running_chain(pg_dsn, tethered=False) as chain, aiohttp.ClientSession() as s:
            url = chain.path("/orders/9?query_ms=1500")
            with pytest.raises(TimeoutError):
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=0.3)):
                    pass
            await asyncio.sleep(0.2)
            assert await active_backends(monitor, "inventory") == 1
    finally:
        await monitor.close()
