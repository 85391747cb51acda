"""A Starlette app for server-process tests: /slow records when it is cancelled.

The file named by TETHER_TEST_RECORD gets one line per event: "started <t>" when the handler
starts and "cancelled <t>" when it is cancelled (t: time.monotonic(), which is one clock for all
processes on the machine).
"""

from __future__ import annotations

import asyncio
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
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


app = Starlette(routes=[Route("/slow", slow)])
app.add_middleware(TetherMiddleware)
