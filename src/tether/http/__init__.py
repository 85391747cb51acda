"""tether for HTTP services and clients.

- `TetherMiddleware`: pure ASGI middleware (Starlette, FastAPI, any ASGI app).
- `Client`: an aiohttp-based client that passes the budget on (needs the `http` extra).
- `tether.http.httpx_transport`: the same guarantees for teams on httpx (the `httpx` extra).
"""

from typing import TYPE_CHECKING, Any

from tether.http.asgi import TetherMiddleware
from tether.http.timings import CallTimings

if TYPE_CHECKING:
    from tether.http.client import AnswerTooLarge, Client, HTTPStatusError, Response

__all__ = [
    "AnswerTooLarge",
    "CallTimings",
    "Client",
    "HTTPStatusError",
    "Response",
    "TetherMiddleware",
]


def __getattr__(name: str) -> Any:
    # The client needs aiohttp (the `http` extra); the middleware needs nothing.
    if name in {"AnswerTooLarge", "Client", "HTTPStatusError", "Response"}:
        from tether.http import client

        return getattr(client, name)
    raise AttributeError(f"module 'tether.http' has no attribute {name!r}")
