"""TetherMiddleware under uvicorn and hypercorn against many random exchanges at once (seeded).

Apps that read their upload slowly, ignore it, answer and then read on until the end, or work
for seconds; clients that send bodies of random sizes in random pieces and wait for the answer
or leave at a random moment. Invariants: every client that waits gets its whole answer (the
body read whole, byte for byte counted); every slow app whose client left with no more than
`READ_AHEAD_LIMIT` bytes unread is cancelled; at the end of every budget nothing of the
middleware's is left running, and the loop reported no error while serving.

hypercorn closes a connection whose upload the app did not read whole once it has answered
(its client may then see a reset instead of the answer) and cancels such an app after its
answer; those outcomes are hypercorn's, allowed for the apps that leave their upload unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tether.http import TetherMiddleware
from tether.http.asgi import READ_AHEAD_LIMIT

from .servers import fuzz_seed, hypercorn_server, uvicorn_serving

pytestmark = pytest.mark.integration

KINDS = ("read", "ignore", "after", "slow")
BUDGET = 1.0  # seconds: every request's, so that the test ends soon after it


class Outcomes(dict[str, Any]):
    """What each app did, by request name (`<kind>-<number>`)."""


def random_app(outcomes: Outcomes, rng: random.Random) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        name = scope["path"].strip("/")
        kind = name.partition("-")[0]
        try:
            if kind == "read":  # read the whole upload in its own time, then answer its size
                total = 0
                while True:
                    await asyncio.sleep(rng.random() * 0.01)
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        outcomes[name] = "client left while read"
                        return
                    total += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
                await answer(send, str(total).encode())
                outcomes[name] = total
            elif kind == "ignore":  # never read the upload
                await asyncio.sleep(rng.random() * 0.05)
                await answer(send, b"ok")
                outcomes[name] = "answered"
            elif kind == "after":  # answer, then read until the server reports the end
                await asyncio.sleep(rng.random() * 0.02)
                await answer(send, b"ok")
                while (await receive())["type"] != "http.disconnect":
                    pass
                outcomes[name] = "heard the end"
            else:  # slow: outlives its client
                await asyncio.sleep(30)
                outcomes[name] = "finished"
        except asyncio.CancelledError:
            outcomes[name] = "cancelled"
            raise

    return app


async def answer(send: Any, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def client(
    port: int, name: str, size: int, leave_after: float | None, rng: random.Random
) -> tuple[str, int, bytes]:
    """Upload `size` bytes in random pieces; leave after `leave_after` seconds, or read the
    answer. Returns what happened, the bytes sent, and the answer's body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST /{name} HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n"
    writer.write(head.encode())
    sent = 0
    ends = time.monotonic() + (leave_after if leave_after is not None else 60)
    try:
        with contextlib.suppress(ConnectionError):  # a server that answered and closed
            while sent < size and time.monotonic() < ends:
                piece = min(size - sent, rng.choice([100, 1_000, 10_000, 70_000]))
                writer.write(b"x" * piece)
                sent += piece
                await writer.drain()
                await asyncio.sleep(rng.random() * 0.005)
        if leave_after is not None:
            await asyncio.sleep(max(0.0, ends - time.monotonic()))
            return "left", sent, b""
        try:
            answer = await asyncio.wait_for(reader.read(65536), 10)
        except ConnectionError:
            return "reset", sent, b""
        status = answer.split(b"\r\n", 1)[0]
        return status.decode(), sent, answer.rpartition(b"\r\n\r\n")[2]
    finally:
        writer.close()


@asynccontextmanager
async def serving(server: str, app: Any) -> AsyncIterator[int]:
    """`app` under `server`; yields its port."""
    if server == "hypercorn":
        async with hypercorn_server(app) as url:
            yield int(url.rsplit(":", 1)[1])
        return
    async with uvicorn_serving(app, http=server.partition("-")[2]) as (url, _server):
        yield int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("server", ["uvicorn-h11", "uvicorn-httptools", "hypercorn"])
async def test_random_uploads_answers_and_departures_keep_the_invariants(server: str) -> None:
    seed = fuzz_seed()
    rng = random.Random(seed)
    outcomes = Outcomes()
    loop_errors: list[str] = []
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: loop_errors.append(str(context)))
    middleware = TetherMiddleware(
        random_app(outcomes, rng), default_budget=BUDGET, max_budget=BUDGET
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":  # hypercorn asks for lifespan; none here
            await middleware(scope, receive, send)

    try:
        async with serving(server, app) as port:
            plans = []
            for number in range(150):
                kind = rng.choice(KINDS)
                size = rng.choice([0, 10, 5_000, 100_000, 300_000])
                leave = rng.choice([None, None, 0.002, 0.02, 0.1])
                if kind == "slow" and leave is None:
                    leave = 0.1
                name = f"{kind}-{number}"
                task = asyncio.create_task(client(port, name, size, leave, rng))
                plans.append((name, kind, size, leave, task))
                await asyncio.sleep(0.002)
            results = {name: await task for name, _, _, _, task in plans}
            await asyncio.sleep(BUDGET + 0.2)  # every budget is over
            ours = {"TetherMiddleware.__call__", "_Watch._read_ahead"}
            left_running = [
                task.get_coro().__qualname__  # type: ignore[union-attr]
                for task in asyncio.all_tasks()
                if task.get_coro().__qualname__ in ours  # type: ignore[union-attr]
            ]
            errors_while_serving = list(loop_errors)  # not the server's own shutdown's
    finally:
        loop.set_exception_handler(previous_handler)
    wrong = []
    for name, kind, size, leave, _ in plans:
        what, sent, body = results[name]
        outcome = outcomes.get(name)
        if leave is None:
            expected_body = str(size).encode() if kind == "read" else b"ok"
            expected_outcome = {"read": size, "ignore": "answered", "after": "heard the end"}
            unread = server == "hypercorn" and kind != "read" and size > 0
            if unread and (what == "reset" or outcome == "cancelled"):
                continue  # hypercorn's, for an upload left unread (see the top)
            answered = what.startswith("HTTP/1.1 200") and body == expected_body
            if not answered or outcome != expected_outcome[kind]:
                wrong.append((name, size, results[name], outcome))
        elif kind == "slow" and sent <= READ_AHEAD_LIMIT and outcome != "cancelled":
            wrong.append((name, size, results[name], outcome))
    assert wrong == [], f"seed {seed}"
    assert left_running == [], f"seed {seed}"
    assert errors_while_serving == [], f"seed {seed}"
    kinds_seen = {kind for name, kind, _, leave, _ in plans if leave is None}
    assert kinds_seen >= {"read", "ignore", "after"}, f"seed {seed}"
