"""A Starlette app for server-process tests: /slow records when it is cancelled; /file answers
with a file (through the server's pathsend, where it has one) and then works 100 ms in a
background task, recording how that ended.

The file named by TETHER_TEST_RECORD gets one line per event: "started <t>" when the handler
starts and "cancelled <t>" when it is cancelled, "background-done <t>" or
"background-cancelled <t>" (t: time.monotonic(), which is one clock for all processes on the
machine).
"""

from __future__ import annotations

import asyncio
import os
import time

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from tether.http import TetherMiddleware


def _record(event: str) -> None:
    with open(os.environ["TETHER_TEST_RECORD"], "a") as record:
        record.write(f"{event} {time.monotonic()}\n")


async def slow(request: Request) -> Response:
    _record("started")
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        _record("cancelled")
        raise
    return Response(b"late")


async def background_work() -> None:
    try:
        await asyncio.sleep(0.1)  # well past the middleware's WATCH_AFTER: its watch runs
    except asyncio.CancelledError:
        _record("background-cancelled")
        raise
    _record("background-done")


async def file(request: Request) -> FileResponse:
    return FileResponse(__file__, background=BackgroundTask(background_work))


app = Starlette(routes=[Route("/slow", slow), Route("/file", file)])
app.add_middleware(TetherMiddleware)
