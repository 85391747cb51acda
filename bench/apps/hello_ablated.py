"""The hello-world app with TetherMiddleware, minus the pieces named in `TETHER_ABLATE`
(comma-separated): what each piece of the middleware costs, for `bench/ablate_middleware.py`.

An experiment, not a way to run tether: each piece is replaced inside `tether.http.asgi`, so
the middleware no longer does what it promises.
- `block`: no deadline block (no entry in the loop's deadline heap, no ambient deadline);
- `request_id`: a fixed request id instead of a new one per request;
- `watch`: requests are not listed for the disconnect watch;
- `getpid`: the request's task looked up through its loop, without the getpid() system call
  that `asyncio.current_task()` makes on CPython 3.11.
"""

import asyncio
import contextlib
import os
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

import tether.http.asgi as asgi
from apps.hello import hello
from tether.http import TetherMiddleware

PIECES = ("block", "request_id", "watch", "getpid")


class _NotListed:
    def discard(self, exchange: object) -> None:
        pass


def _without(piece: str) -> None:
    if piece == "block":
        asgi.deadline_for_request = lambda *_, **__: contextlib.nullcontext()
    elif piece == "request_id":
        asgi.new_request_id = lambda: "3f49ac9f-478a-4134-93ac-a6246e399ae0"
    elif piece == "watch":
        asgi._Exchange.watch = lambda self, task: _NotListed()
    elif piece == "getpid":
        found: dict[str, Any] = {}

        def current_task() -> Any:
            lookup = found.get("lookup")
            if lookup is None:  # once: get_running_loop() makes the system call too
                lookup = found["lookup"] = partial(asyncio.current_task, asyncio.get_running_loop())
            return lookup()

        asgi._current_task = current_task
    else:
        raise SystemExit(f"TETHER_ABLATE: unknown piece {piece!r}; pieces: {', '.join(PIECES)}")


for _piece in filter(None, os.environ.get("TETHER_ABLATE", "").split(",")):
    _without(_piece)

app = Starlette(routes=[Route("/", hello)])
app.add_middleware(TetherMiddleware)
