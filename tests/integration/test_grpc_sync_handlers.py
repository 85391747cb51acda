"""Synchronous (`def`) handlers on a real grpc.aio server (its `migration_thread_pool`) behind
tether's interceptor: the same request id, ambient deadline, safety net and log line as async
handlers, set up in the worker thread, for all four call shapes; synchronous streams end with
their call and give their thread back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio
import pytest

import tether.grpc
from tether import check_deadline, current_request_id, deadline_after, time_remaining
from tether.request_id import request_id_scope

from .grpc_services import grpc_server, method
from .servers import LATE, wait_until
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


def threads(count: int = 4) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=count, thread_name_prefix="grpc-sync")


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


def abort_too_late(request: bytes, context: Any) -> bytes:
    time.sleep(0.3)  # past the caller's 100 ms: grpc has ended the call
    context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
    return b"never"


async def test_an_abort_after_the_callers_deadline_is_logged_as_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A `def` handler that aborts after its caller's deadline: the caller got
    DEADLINE_EXCEEDED from grpc, and the call's log line now says so (it said NOT_FOUND, the
    abort that was never sent)."""
    caplog.set_level("INFO", logger="tether.grpc")
    handlers = {"Late": grpc.unary_unary_rpc_method_handler(abort_too_late)}
    async with (
        grpc_server(handlers, migration_thread_pool=threads()) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary(method("Late"))(b"x", timeout=0.1)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        (line,) = await call_lines(caplog, 1)
    assert line.grpc_code == "DEADLINE_EXCEEDED"  # type: ignore[attr-defined]


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


class Endless:
    """A synchronous server stream that yields every 20 ms until closed; notes when each of
    its generators was closed (its `finally` ran) and in which thread."""

    def __init__(self) -> None:
        self.closed: list[tuple[float, str]] = []

    def __call__(self, request: bytes, context: Any) -> Iterator[bytes]:
        try:
            while True:
                time.sleep(0.02)
                yield request
        finally:
            self.closed.append((time.perf_counter(), threading.current_thread().name))

    def each(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        """Echo each request as it comes: between them, the thread waits for the next."""
        try:
            yield from requests
        finally:
            self.closed.append((time.perf_counter(), threading.current_thread().name))


def endless_server(endless: Endless, **settings: Any) -> Any:
    handlers = {
        "Endless": grpc.unary_stream_rpc_method_handler(endless),
        "EchoEach": grpc.stream_stream_rpc_method_handler(endless.each),
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
    }
    return grpc_server(handlers, migration_thread_pool=threads(2), **settings)


async def test_cancelled_synchronous_streams_give_their_threads_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """grpc.aio alone keeps one pool thread for good per cancelled synchronous stream, and
    never closes its generator: two such calls stop a two-thread pool. Behind tether, six
    cancelled streams on two threads each have their generator closed within a step of the
    cancel, and the server's synchronous handlers still answer."""
    caplog.set_level("INFO", logger="tether.grpc")
    endless = Endless()
    async with endless_server(endless) as target, grpc.aio.insecure_channel(target) as channel:
        for number in range(6):
            call = channel.unary_stream(method("Endless"))(b"x")
            assert [await call.read(), await call.read()] == [b"x", b"x"]
            call.cancel()
            cancelled = time.perf_counter()
            await wait_until(lambda: endless.closed, lambda closed, n=number: len(closed) > n, 2)
            assert endless.closed[number][0] - cancelled < 0.02 + LATE
        assert {name for _, name in endless.closed} <= {"grpc-sync_0", "grpc-sync_1"}
        answer = await channel.unary_unary(method("UnaryUnary"))(b"x", timeout=2)
        assert answer.split()[0] != b"none"
        assert len([m async for m in channel.unary_stream(method("UnaryStream"))(b"x")]) == 2
    lines = await call_lines(caplog, 8)
    codes = Counter(line.grpc_code for line in lines)  # type: ignore[attr-defined]
    assert codes == {"CANCELLED": 6, "OK": 2}


async def test_a_synchronous_stream_ends_at_its_deadline_and_its_generator_is_closed() -> None:
    """The client's deadline, and a budget only the server knows (its default), each end a
    synchronous stream for the client on time; the generator is closed right after the step
    it was in, in a pool thread."""
    endless = Endless()
    async with (
        endless_server(endless, default_budget=0.3) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        for timeout in (0.3, None):  # the client's own deadline; the server's default budget
            start = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in channel.unary_stream(method("Endless"))(b"x", timeout=timeout):
                    pass
            took = time.perf_counter() - start
            assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, (timeout, raised.value)
            assert 0.29 <= took < 0.3 + LATE, (timeout, took)
            await wait_until(lambda: endless.closed, bool, 1)
            closed_after = endless.closed.pop()[0] - start
            assert closed_after < 0.3 + 0.02 + LATE, (timeout, closed_after)


async def test_a_synchronous_stream_waiting_for_requests_ends_with_its_call() -> None:
    """A stream-stream `def` handler blocked in its thread on the next request: cancelling
    the call frees that thread too, and the generator is closed."""
    endless = Endless()

    async def one_then_wait() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(30)  # the handler waits for a second one; the call is cancelled

    async with endless_server(endless) as target, grpc.aio.insecure_channel(target) as channel:
        for number in range(3):
            call = channel.stream_stream(method("EchoEach"))(one_then_wait())
            assert await call.read() == b"first"
            await asyncio.sleep(0.05)  # the handler's thread now waits for the next request
            call.cancel()
            await wait_until(lambda: endless.closed, lambda closed, n=number: len(closed) > n, 2)
        answer = await channel.unary_unary(method("UnaryUnary"))(b"x", timeout=2)
        assert answer.split()[0] != b"none"


def using_the_context(request: bytes, context: Any) -> Iterator[bytes]:
    """A synchronous stream that uses grpc's synchronous servicer API from its thread."""
    context.send_initial_metadata((("x-shard", "7"),))
    context.set_trailing_metadata((("x-rows", "1"),))
    context.add_callback(lambda: CALLBACKS.append(threading.current_thread().name))
    yield b"active" if context.is_active() else b"inactive"
    yield context.invocation_metadata()[-1].value.encode() if request == b"meta" else b"-"
    if request == b"abort":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such shard")


CALLBACKS: list[str] = []


async def test_a_synchronous_stream_gets_grpcs_synchronous_servicer_api() -> None:
    """send_initial_metadata, set_trailing_metadata, add_callback (run when the call ends),
    is_active, invocation_metadata and abort work from the handler's thread."""
    CALLBACKS.clear()
    handlers = {"Context": grpc.unary_stream_rpc_method_handler(using_the_context)}
    async with (
        grpc_server(handlers, migration_thread_pool=threads()) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        call = channel.unary_stream(method("Context"))(b"meta", metadata=(("x-tenant", "acme"),))
        assert [m async for m in call] == [b"active", b"acme"]
        assert ("x-shard", "7") in tuple(await call.initial_metadata())
        assert ("x-rows", "1") in tuple(await call.trailing_metadata())
        assert await call.code() is grpc.StatusCode.OK

        call = channel.unary_stream(method("Context"))(b"abort")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in call:
                pass
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        assert raised.value.details() == "no such shard"
        await wait_until(lambda: CALLBACKS, lambda ran: len(ran) == 2, 1)
    assert "grpc-sync" not in "".join(CALLBACKS)  # run by the call's event loop, not a worker


async def test_what_a_synchronous_stream_raises_after_its_call_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception from a generator being closed after its call ended reaches nobody: it is
    logged as a warning, and the server goes on."""
    caplog.set_level("INFO", logger="tether.grpc")

    def messy(request: bytes, context: Any) -> Iterator[bytes]:
        try:
            while True:
                time.sleep(0.01)
                yield b"row"
        finally:
            raise RuntimeError("cleanup failed")

    handlers = {"Messy": grpc.unary_stream_rpc_method_handler(messy)}
    async with (
        grpc_server(handlers, migration_thread_pool=threads()) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        call = channel.unary_stream(method("Messy"))(b"x")
        assert await call.read() == b"row"
        call.cancel()
        await wait_until(
            lambda: [r for r in caplog.records if "after its call ended" in r.getMessage()],
            bool,
            2,
        )
        warning = next(r for r in caplog.records if "after its call ended" in r.getMessage())
        assert warning.levelname == "WARNING"
        assert warning.exc_info is not None
        assert "cleanup failed" in str(warning.exc_info[1])
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in channel.unary_stream(method("Messy"))(b"x", timeout=0.1):
                pass
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_stream_on_a_shut_down_pool_is_answered_internal() -> None:
    """A pool that no longer takes work (shut down while the server runs) cannot step a
    synchronous stream: the call is answered INTERNAL, nothing hangs, the server goes on."""
    endless = Endless()
    pool = threads(1)
    handlers = {
        "Endless": grpc.unary_stream_rpc_method_handler(endless),
        "Async": grpc.unary_unary_rpc_method_handler(async_unary),
    }
    async with (
        grpc_server(handlers, migration_thread_pool=pool) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        pool.shutdown()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in channel.unary_stream(method("Endless"))(b"x", timeout=2):
                pass
        assert raised.value.code() is grpc.StatusCode.INTERNAL
        assert await channel.unary_unary(method("Async"))(b"x", timeout=2) == b"x"
    assert endless.closed == []  # never started


async def async_unary(request: bytes, context: Any) -> bytes:
    return request
