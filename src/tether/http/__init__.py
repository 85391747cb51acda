"""tether for HTTP services and clients.

- `TetherMiddleware`: pure ASGI middleware (Starlette, FastAPI, any ASGI app).
- `Client`: an aiohttp-based client that passes the budget on (needs the `http` extra).
- `tether.http.httpx_transport`: the same guarantees for teams on httpx (the `httpx` extra).
"""

from tether.http.asgi import TetherMiddleware

__all__ = ["TetherMiddleware"]
