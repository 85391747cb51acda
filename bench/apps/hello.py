"""Hello-world Starlette apps for the middleware benchmark: the same app with and without tether."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tether.http import TetherMiddleware


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


plain = Starlette(routes=[Route("/", hello)])
with_tether = Starlette(routes=[Route("/", hello)])
with_tether.add_middleware(TetherMiddleware)
