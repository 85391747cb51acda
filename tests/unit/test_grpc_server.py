"""Where the gRPC server interceptor reads a call's metadata (no sockets)."""

from __future__ import annotations

import importlib
from typing import Any

import grpc

server = importlib.import_module("tether.grpc.server")  # the package re-exports server()


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


class Context:
    """A servicer context that can say whether it was asked for the metadata."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata
        self.asked = 0

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        self.asked += 1
        return self.metadata


def test_the_handler_reads_the_details_its_interceptor_saw() -> None:
    context = Context((("x-request-id", "from-context"),))
    token = server._arriving.set(Details("/s/M", (("x-request-id", "from-details"),)))
    try:
        found: Any = server._metadata_of("/s/M", context)
    finally:
        server._arriving.reset(token)
    assert found == (("x-request-id", "from-details"),)
    assert context.asked == 0


def test_without_matching_details_the_context_is_asked() -> None:
    context = Context((("x-request-id", "from-context"),))
    assert server._metadata_of("/s/M", context) == (("x-request-id", "from-context"),)
    token = server._arriving.set(Details("/s/Other", (("x-request-id", "stale"),)))
    try:
        assert server._metadata_of("/s/M", context) == (("x-request-id", "from-context"),)
    finally:
        server._arriving.reset(token)
    assert context.asked == 2
