"""Synchronous (`def`) handlers on a real grpc.aio server (its `migration_thread_pool`) behind
tether's interceptor: the same request id, ambient deadline, safety net and log line as async
handlers, set up in the worker thread, for all four call shapes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio
import pytest

import tether.grpc
from tether import check_deadline, current_request_id, deadline_after, time_remaining
from tether.request_id import request_id_scope

from .grpc_services import grpc_server, method
from .test_grpc import call_lines

pytestmark = pytest.mark.integration


def report() -> bytes:
    left = time_remaining()
    return f"{'none' if left is None else f'{left:.3f}'} {current_request_id()}".encode()


def unary_unary(request: bytes, context: Any) -> bytes:
    return report()


def unary_stream(request: bytes, context: Any) -> Iterator[bytes]:
    yield report()
    yield report()


def stream_unary(requests: Iterator[bytes], context: Any) -> bytes:
    assert b"".join(requests) == b"ab"
    return report()


def stream_stream(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
    for _ in requests:
        yield report()


HANDLERS = {
    "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
    "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
    "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
    "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
}


def threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="grpc-sync")


async def test_all_four_shapes_see_the_deadline_and_request_id_in_their_thread() -> None:
    """Without tether, grpc runs these handlers with no deadline and no request id in sight;
    with it, each handler's thread has the client's budget and id, and a call without a
    deadline gets the server's default, as async handlers do."""
    async with (
        grpc_server(HANDLERS, migration_thread_pool=threads(), default_budget=3.0) as target,
        tether.grpc.insecure_channel(target) as channel,
    ):
        with request_id_scope("req-sync"):
            async with deadline_after(0.8):
                answers = [
                    await channel.unary_unary(method("UnaryUnary"))(b"x"),
                    *[m async for m in channel.unary_stream(method("UnaryStream"))(b"x")],
                    await channel.stream_unary(method("StreamUnary"))(iter([b"a", b"b"])),
                    *[
                        m
                        async for m in channel.stream_stream(method("StreamStream"))(
                            iter([b"a", b"b"])
                        )
                    ],
                ]
        plain = await channel.unary_unary(method("UnaryUnary"))(b"x")
    assert len(answers) == 6
    for answer in answers:
        left, request_id = answer.decode().split()
        assert 0.6 < float(left) <= 0.8, answer
        assert request_id == "req-sync"
    left, request_id = plain.decode().split()
    assert 2.9 < float(left) <= 3.0
    assert request_id != "req-sync"
    # nothing of a call is left behind in the pool's threads for the next call
    async with grpc_server(HANDLERS, migration_thread_pool=threads()) as target:
        async with tether.grpc.insecure_channel(target) as channel:
            assert (await channel.unary_unary(method("UnaryUnary"))(b"x")).split()[1] != b"req-sync"


def failing(request: bytes, context: Any) -> bytes:
    if request == b"raise":
        raise ValueError("secret connection string in the message")
    if request == b"abort":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
    if request == b"loop":  # a synchronous loop that checks its budget between steps
        while True:
            check_deadline()
            time.sleep(0.005)
    return b"ok"


async def test_the_safety_net_and_log_line_hold_for_synchronous_handlers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception is INTERNAL without its text; the handler's own abort passes through; a
    loop that checks the default budget ends with it as DEADLINE_EXCEEDED; invalid deadline
    metadata is refused; 200 failing calls in a row, then a good one; one log line per call."""
    caplog.set_level("INFO", logger="tether.grpc")
    handlers = {"Failing": grpc.unary_unary_rpc_method_handler(failing)}
    async with (
        grpc_server(handlers, migration_thread_pool=threads(), default_budget=0.2) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        call = channel.unary_unary(method("Failing"))
        for _ in range(200):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(b"raise")
            assert raised.value.code() is grpc.StatusCode.INTERNAL
            assert raised.value.details() == "internal error"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(b"abort")
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        assert raised.value.details() == "no such order"
        start = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(b"loop")
        took = time.perf_counter() - start
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.19 <= took < 0.3
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(b"ok", metadata=(("x-request-timeout", "soon"),))
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "x-request-timeout" in (raised.value.details() or "").lower()
        assert await call(b"ok") == b"ok"
    assert "secret" not in caplog.text.split("Traceback")[0]
    lines = await call_lines(caplog, 203, "Failing")
    # a worker thread can write its line just after its client has the status, so a line
    # may follow the next call's: count the codes, not their order
    codes = Counter(line.grpc_code for line in lines)  # type: ignore[attr-defined]
    assert codes == {"INTERNAL": 200, "NOT_FOUND": 1, "DEADLINE_EXCEEDED": 1, "OK": 1}
