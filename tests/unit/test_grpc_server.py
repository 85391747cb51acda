"""tether.grpc without sockets: where the server reads a call's metadata, and the timeout the
client gives grpc so that what grpc sends stays within the budget."""

from __future__ import annotations

import importlib
import math
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.grpc.client import timeout_for_grpc

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


def grpc_encodes(millis: int) -> int:
    """The milliseconds gRPC C-core's grpc-timeout says for `millis` left, below 100,000 s
    (Timeout::FromMillis / FromSeconds: three significant figures, rounding up; where it
    switches to minutes the value is an exact multiple, so the number is the same)."""
    if millis < 1000:
        return millis
    if millis < 10_000:
        return -(-millis // 10) * 10
    if millis < 100_000:
        return -(-millis // 100) * 100
    seconds = -(-millis // 1000)
    if seconds < 1000:
        return seconds * 1000
    if seconds < 10_000:
        return -(-seconds // 10) * 10_000
    return -(-seconds // 100) * 100_000


@settings(max_examples=3000)
@given(st.floats(min_value=0.001, max_value=99_999.0), st.floats(min_value=0.0, max_value=1.0))
def test_what_grpc_may_send_is_within_the_budget(seconds: float, stale_ms: float) -> None:
    """gRPC reads the time left from a clock up to ~1 ms old, rounds it up to whole ms and to
    three figures, then may send instead an earlier timeout of the connection up to 3% longer.
    The longest it may send stays within the budget (below 1 s: within 2.1 ms more, which the
    client's 5 ms margin covers), and at most ~4% of the budget is given up."""
    given_to_grpc = timeout_for_grpc(seconds)
    encoded = grpc_encodes(math.ceil(given_to_grpc * 1000 + stale_ms - 1e-9))
    longest_reused = encoded / 0.97  # HPACK: an earlier value b is re-sent when a/b > 0.97
    assert longest_reused <= seconds * 1000 + (2.1 if seconds < 1.03 else 1e-6)
    assert given_to_grpc >= seconds * 0.96 - 0.002


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.3, 0.291),
        (1.0, 0.97),
        (1.1, 1.058),
        (12.345, 11.898),
        (123.456, 118.998),
        (200_000.0, 190_799.998),  # 27 hours and more: grpc sends whole hours
    ],
)
def test_timeout_for_grpc_examples(seconds: float, expected: float) -> None:
    assert timeout_for_grpc(seconds) == pytest.approx(expected, abs=1e-9)


class AbortReturnsContext(Context):
    """grpc.aio's context for a worker thread before grpc 1.85: `abort()` sends the status and
    returns, so a handler would run on after it."""

    def __init__(self) -> None:
        super().__init__(())
        self.aborted: list[tuple[grpc.StatusCode, str]] = []

    def time_remaining(self) -> float | None:
        return None

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.aborted.append((code, details))


def test_a_def_handler_stops_at_an_abort_that_returns() -> None:
    """A `def` handler's `context.abort()` that returns (grpc.aio before 1.85) stops the
    handler all the same; the guard then gives grpc an empty answer (grpc sends the abort's
    status instead), and the safety net's own abort ends the same way: no AssertionError for
    grpc to log, no code after the abort run."""
    ran_on: list[str] = []

    def aborts(request: bytes, context: Any) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
        ran_on.append("after the abort")
        return b"too late"

    def fails(request: bytes, context: Any) -> bytes:
        raise ValueError("secret")

    policy = server.TetherServerInterceptor()
    for handler, expected in (
        (aborts, (grpc.StatusCode.NOT_FOUND, "no such order")),
        (fails, (grpc.StatusCode.INTERNAL, "internal error")),
    ):
        context = AbortReturnsContext()
        guarded = server._sync_unary(handler, policy, "/s/M", False, None, server._bytes_only)
        assert guarded(b"", context) == b""
        assert context.aborted == [expected]
    assert ran_on == []
