"""Outbound calls for the instruction count: `python -m apps.client_calls aiohttp|tether PORT N`

Makes N GETs to 127.0.0.1:PORT, 50 at a time, after 300 warm-up calls; with N=0 it measures
the set-up alone (count_instructions.py subtracts it).
"""

import asyncio
import sys
from collections.abc import Awaitable, Callable
from functools import partial

import aiohttp

import tether
from tether.http import Client

COUNTED_BUDGET = 3600.0


async def calls(call: Callable[[], Awaitable[object]], count: int) -> None:
    left = iter(range(count))

    async def worker() -> None:
        for _ in left:
            await call()

    await asyncio.gather(*(worker() for _ in range(50)))


async def plain_get(session: aiohttp.ClientSession, url: str) -> None:
    """The reference call of both client benchmarks (timed and counted): one GET with plain
    aiohttp, body read."""
    async with session.get(url) as answer:
        await answer.read()


async def main(kind: str, url: str, count: int) -> None:
    if kind == "aiohttp":
        async with aiohttp.ClientSession() as session:
            plain = partial(plain_get, session, url)
            await calls(plain, 300)
            await calls(plain, count)
        return
    # A budget long enough for all the calls under valgrind's cache simulation (CALLER_BUDGET
    # is not): the client does the same work under any budget, only X-Request-Timeout's digits
    # differ.
    async with Client() as client, tether.deadline_after(COUNTED_BUDGET):
        await calls(lambda: client.get(url), 300)
        await calls(lambda: client.get(url), count)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], f"http://127.0.0.1:{sys.argv[2]}/", int(sys.argv[3])))
