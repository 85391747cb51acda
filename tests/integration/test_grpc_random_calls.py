"""tether's grpc.aio server against many random calls at once (seeded).

Three call shapes (unary, server streaming, client streaming); handlers that answer, sleep past
the budget, raise, abort, await a task cancelled elsewhere, abort from a fan-out's task, or run
out of a block of their own; callers with or without a deadline, some cancelling at a random
moment. Invariants: each call the caller did not cancel ends with the status its handler's
behaviour calls for, within its deadline; each handler that ran gets one log line; the only
errors logged are tether's for the handlers that fail (no second abort, no grpc complaint);
the loop reports nothing; the server still answers afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

import tether
import tether.grpc

from .servers import fuzz_seed

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
# What each behaviour ends its call with.
EXPECTED = {
    "ok": Code.OK,
    "sleep": Code.DEADLINE_EXCEEDED,
    "raise": Code.INTERNAL,
    "abort": Code.NOT_FOUND,
    "stray": Code.INTERNAL,
    "fan_abort": Code.NOT_FOUND,
    "block": Code.DEADLINE_EXCEEDED,
}
FAILING = {"raise", "stray"}  # the behaviours whose calls tether logs as errors
DEFAULT_BUDGET = 0.5


async def behave(kind: str, context: Any) -> None:
    if kind == "sleep":
        await asyncio.sleep(10)
    elif kind == "raise":
        raise ValueError("secret")
    elif kind == "abort":
        await context.abort(Code.NOT_FOUND, "no such item")
    elif kind == "stray":  # awaits a task its owner cancels
        work = asyncio.create_task(asyncio.sleep(10))
        try:
            await asyncio.sleep(0)
        finally:
            work.cancel()
        await work
    elif kind == "fan_abort":

        async def check() -> None:
            await asyncio.sleep(0.001)
            await context.abort(Code.NOT_FOUND, "no such item")

        async with asyncio.TaskGroup() as group:
            group.create_task(check())
            group.create_task(asyncio.sleep(1))
    elif kind == "block":
        async with tether.deadline_after(0.01):
            await asyncio.sleep(1)


class Service:
    """The three handlers; counts the calls that reached a handler, and notes the names of
    those that reached their behaviour."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.entered = 0
        self.started: set[str] = set()

    async def unary(self, request: bytes, context: Any) -> bytes:
        self.entered += 1
        name = request.decode()
        self.started.add(name)
        await asyncio.sleep(self.rng.random() * 0.01)
        await behave(name.partition("-")[0], context)
        return b"done"

    async def stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.entered += 1
        name = request.decode()
        self.started.add(name)
        for number in range(3):
            yield b"%d" % number
            await asyncio.sleep(self.rng.random() * 0.005)
        await behave(name.partition("-")[0], context)
        yield b"done"

    async def upload(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        self.entered += 1
        name = ""
        async for request in requests:
            name = request.decode()
        self.started.add(name)
        await behave(name.partition("-")[0], context)
        return b"done"


async def call(
    channel: grpc.aio.Channel, shape: str, name: str, deadline_in: float | None
) -> tuple[Code, float]:
    """How the call ended, and after how long."""
    started = time.perf_counter()
    code = await call_once(channel, shape, name, deadline_in)
    return code, time.perf_counter() - started


async def call_once(
    channel: grpc.aio.Channel, shape: str, name: str, deadline_in: float | None
) -> Code:
    data = name.encode()
    try:
        if shape == "unary":
            await channel.unary_unary("/fuzz.S/Unary")(data, timeout=deadline_in)
        elif shape == "stream":
            async for _ in channel.unary_stream("/fuzz.S/Stream")(data, timeout=deadline_in):
                pass
        else:

            async def requests() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield data
                    await asyncio.sleep(0.001)

            await channel.stream_unary("/fuzz.S/Upload")(requests(), timeout=deadline_in)
    except grpc.aio.AioRpcError as failed:
        return failed.code()
    return Code.OK


async def test_random_calls_end_with_their_status_and_clean_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seed = fuzz_seed()
    rng = random.Random(seed)
    service = Service(rng)
    loop_errors: list[str] = []
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: loop_errors.append(str(context)))
    server = tether.grpc.server(default_budget=DEFAULT_BUDGET)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(service.unary),
        "Stream": grpc.unary_stream_rpc_method_handler(service.stream),
        "Upload": grpc.stream_unary_rpc_method_handler(service.upload),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("fuzz.S", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    plans = []
    try:
        with caplog.at_level(logging.INFO):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for number in range(150):
                    kind = rng.choice(sorted(EXPECTED))
                    shape = rng.choice(["unary", "stream", "upload"])
                    timeout = rng.choice([None, 3.0])
                    cancel_after = rng.choice([None, None, None, 0.005, 0.05])
                    name = f"{kind}-{number}"
                    task = asyncio.create_task(call(channel, shape, name, timeout))
                    if cancel_after is not None:
                        loop.call_later(cancel_after, task.cancel)
                    plans.append((name, kind, shape, cancel_after, task))
                    await asyncio.sleep(0.001)
                # Bounded: a call whose handler's end grpc never reported would wait forever.
                await asyncio.wait([task for *_, task in plans], timeout=30)
                await asyncio.sleep(DEFAULT_BUDGET + 0.2)  # every handler has ended
                assert (await call(channel, "unary", "ok-last", None))[0] is Code.OK
    finally:
        loop.set_exception_handler(previous_handler)
        await server.stop(None)
    wrong = []
    for name, kind, shape, cancel_after, task in plans:
        if not task.done():
            wrong.append((name, shape, cancel_after, "no answer in 30 s", None))
            task.cancel()
            continue
        if task.cancelled():
            continue
        code, took = task.result()
        if code is not EXPECTED[kind] or took > 3.5:  # every call has a deadline within 3 s
            wrong.append((name, shape, cancel_after, code.name, round(took, 3)))
    assert wrong == [], f"seed {seed}"
    lines = [r for r in caplog.records if hasattr(r, "grpc_code")]
    assert len(lines) == service.entered, f"seed {seed}"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    ours = [e for e in errors if "failed; answered INTERNAL" in e]
    assert errors == ours, f"seed {seed}"  # no second abort, no complaint from grpc
    failing = {name for name, kind, *_ in plans if kind in FAILING} & service.started
    assert len(ours) <= len(failing), f"seed {seed}"
    assert loop_errors == [], f"seed {seed}"
