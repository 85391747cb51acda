"""A unary echo gRPC server, with or without tether's interceptor (argv: port, plain|tether)."""

import asyncio
import sys

import grpc
import grpc.aio

import tether.grpc


async def echo(request: bytes, context: object) -> bytes:
    return request


class PassThrough(grpc.aio.ServerInterceptor):
    """An interceptor that does nothing: the cost of grpc.aio's interceptor machinery alone."""

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        return await continuation(details)


async def main(port: int, kind: str) -> None:
    if kind == "tether":
        server = tether.grpc.server()
    elif kind == "noop":
        server = grpc.aio.server(interceptors=[PassThrough()])
    else:
        server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            )
        ]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
