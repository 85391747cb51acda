"""A unary echo gRPC server: `python -m apps.grpc_echo PORT KIND` from bench/, KIND one of
plain, tether (tether's interceptor), noop (a do-nothing interceptor) or busy (plain, with a
handler that spins for `apps.busy_seconds()`)."""

import asyncio
import sys

import grpc
import grpc.aio

import tether.grpc
from apps import busy_seconds, spin


async def echo(request: bytes, context: object) -> bytes:
    return request


BUSY = busy_seconds()


async def busy_echo(request: bytes, context: object) -> bytes:
    """`echo` that first spins for `BUSY` seconds: plain Python work of a known cost."""
    spin(BUSY)
    return request


class PassThrough(grpc.aio.ServerInterceptor):
    """An interceptor that does nothing: the cost of grpc.aio's interceptor machinery alone."""

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        return await continuation(details)


async def main(port: int, kind: str) -> None:
    handler = echo
    if kind == "tether":
        server = tether.grpc.server()
    elif kind == "noop":
        server = grpc.aio.server(interceptors=[PassThrough()])
    elif kind == "busy":
        server = grpc.aio.server()
        handler = busy_echo
    else:
        server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(handler)}
            )
        ]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
