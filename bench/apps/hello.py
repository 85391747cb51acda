"""Hello-world Starlette apps for the middleware benchmark: the same app with and without tether."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apps import busy_seconds, spin
from tether.http import TetherMiddleware
from tether.http.asgi import ASGIApp, Message, Receive, Scope, Send


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


plain = Starlette(routes=[Route("/", hello)])

BUSY = busy_seconds()


async def busy_hello(request: Request) -> JSONResponse:
    """`hello` that first spins for `BUSY` seconds: plain Python work of a known cost."""
    spin(BUSY)
    return JSONResponse({"hello": "world"})


busy = Starlette(routes=[Route("/", busy_hello)])
with_tether = Starlette(routes=[Route("/", hello)])
with_tether.add_middleware(TetherMiddleware)


class TwoHeaders:
    """Adds only the two response headers tether's middleware adds (X-Request-ID and
    Server-Timing, same sizes): what the server itself spends on them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", b"3f49ac9f-478a-4134-93ac-a6246e399ae0"),
                    (b"server-timing", b"app;dur=0.1, budget;dur=10000.0"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


headers_only = Starlette(routes=[Route("/", hello)])
headers_only.add_middleware(TwoHeaders)
