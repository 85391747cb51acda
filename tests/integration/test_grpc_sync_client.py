"""tether.grpc.SyncChannel: calls made with grpc's synchronous API from threads, against real
grpc.aio servers on loopback. The calls run in worker threads whose ambient deadline is set the
way tether's own servers set it for `def` code (`deadline_for_thread`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest

import tether.grpc
from tether import (
    DeadlineExceeded,
    UpstreamTimeout,
    UpstreamUnavailable,
    _clock,
    time_remaining,
)
from tether.deadline import deadline_for_thread
from tether.request_id import request_id_scope

from .grpc_services import grpc_server, method
from .servers import LATE, free_port, wait_until
from .test_grpc import budget_reporter, counting_handler, gives_up_after_50_ms
from .test_grpc_sync_handlers import report

pytestmark = pytest.mark.integration

T = TypeVar("T")


def raising(error: type[BaseException], call: Callable[[], Any]) -> Callable[[], BaseException]:
    """Work for a thread: `call()`, which must raise `error`; returns what it raised."""

    def work() -> BaseException:
        with pytest.raises(error) as caught:
            call()
        return caught.value

    return work


async def in_thread(budget: float | None, work: Callable[[], T], request_id: str = "") -> T:
    """Run `work` in a worker thread under a budget of `budget` seconds (None: no deadline),
    with `request_id` as the ambient request id."""

    def run() -> T:
        when = None if budget is None else _clock.monotonic() + budget
        with request_id_scope(request_id or None), deadline_for_thread(when):
            return work()

    return await asyncio.to_thread(run)


async def report_unary_stream(request: bytes, context: Any) -> Any:
    yield report()


async def report_stream_unary(requests: Any, context: Any) -> bytes:
    async for _ in requests:
        pass
    return report()


async def report_stream_stream(requests: Any, context: Any) -> Any:
    async for _ in requests:
        yield report()


REPORTERS = {
    "Budget": budget_reporter(),
    "UnaryStream": grpc.unary_stream_rpc_method_handler(report_unary_stream),
    "StreamUnary": grpc.stream_unary_rpc_method_handler(report_stream_unary),
    "StreamStream": grpc.stream_stream_rpc_method_handler(report_stream_stream),
}


def parsed(answer: bytes) -> tuple[float, str]:
    left, request_id = answer.decode().split()
    return float(left), request_id


async def test_every_call_form_and_shape_passes_the_threads_budget_and_request_id_on() -> None:
    """Under a 500 ms budget, the callee of each shape and each form (plain, `with_call`,
    `future`) sees at most what was left less the margin, and the thread's request id."""
    async with grpc_server(REPORTERS) as target:

        def calls() -> list[bytes]:
            with tether.grpc.sync_insecure_channel(target) as channel:
                unary = channel.unary_unary(method("Budget"))
                response, call = unary.with_call(b"")
                assert call.code() is grpc.StatusCode.OK
                return [
                    unary(b""),
                    response,
                    unary.future(b"").result(),
                    *channel.unary_stream(method("UnaryStream"))(b""),
                    channel.stream_unary(method("StreamUnary"))(iter([b"a", b"b"])),
                    channel.stream_unary(method("StreamUnary")).with_call(iter([b"a"]))[0],
                    *channel.stream_stream(method("StreamStream"))(iter([b"a"])),
                ]

        answers = await in_thread(0.5, calls, request_id="req-sync")
    assert len(answers) == 7
    for answer in answers:
        left, request_id = parsed(answer)
        assert 0.3 < left <= 0.495, answer
        assert request_id == "req-sync"


async def test_the_callers_own_metadata_and_shorter_timeout_are_kept() -> None:
    """An explicit timeout shorter than the budget is sent as given; metadata the caller set
    (its own x-request-id) is not replaced."""
    async with grpc_server(REPORTERS) as target:

        def call() -> bytes:
            with tether.grpc.sync_insecure_channel(target) as channel:
                budget = channel.unary_unary(method("Budget"))
                return budget(b"", 0.2, [("x-request-id", "callers-own")])

        left, request_id = parsed(await in_thread(5, call, request_id="ambient"))
    assert 0.1 < left <= 0.2 * 1.03  # sent as given; grpc rounds what it sends
    assert request_id == "callers-own"


async def test_without_an_ambient_deadline_only_the_explicit_timeout_is_sent() -> None:
    """No budget in the thread: an explicit timeout is sent unchanged, and without one the
    callee gets its own server's default budget."""
    async with grpc_server(REPORTERS, default_budget=7) as target:

        def calls() -> list[bytes]:
            with tether.grpc.sync_insecure_channel(target) as channel:
                budget = channel.unary_unary(method("Budget"))
                return [budget(b"", timeout=2), budget(b"")]

        with_timeout, without = await in_thread(None, calls)
    assert 1.9 < parsed(with_timeout)[0] <= 2 * 1.03  # grpc's own rounding of what it sends
    assert 6.9 < parsed(without)[0] <= 7


async def test_a_def_handler_passes_what_is_left_of_its_budget_to_the_next_service() -> None:
    """HTTP-style chain of `def` code: a client calls service A with 1 s; A's synchronous
    handler works 100 ms, then calls B through a SyncChannel. B's budget is A's less the work
    done and the margin, and carries the client's request id."""
    async with grpc_server({"Budget": budget_reporter()}) as b_target:
        downstream = tether.grpc.sync_insecure_channel(b_target)
        seen_by_a: list[float] = []

        def a_handler(request: bytes, context: Any) -> bytes:
            seen_by_a.append(time_remaining() or 0.0)
            time.sleep(0.1)
            answer: bytes = downstream.unary_unary(method("Budget"))(b"")
            return answer

        a_handlers = {"Forward": grpc.unary_unary_rpc_method_handler(a_handler)}
        try:
            async with (
                grpc_server(a_handlers) as a_target,
                grpc.aio.insecure_channel(a_target) as channel,
            ):
                answer = await channel.unary_unary(method("Forward"))(
                    b"", timeout=1.0, metadata=(("x-request-id", "req-chain"),)
                )
        finally:
            downstream.close()
    left_at_b, request_id = parsed(answer)
    assert request_id == "req-chain"
    assert left_at_b <= seen_by_a[0] - 0.1 - 0.005
    assert left_at_b > seen_by_a[0] - 0.1 - LATE - 0.05


async def test_a_blocking_call_ends_at_the_budget_and_the_callee_is_cancelled() -> None:
    """A 5 s handler called from a thread with 300 ms left: the thread gets DeadlineExceeded
    (grpc's RpcError as its cause) by the deadline, and the callee is cancelled then too. With
    an explicit 100 ms timeout under a longer budget, the error is UpstreamTimeout."""
    cancelled_at: list[float] = []

    async def slow(request: bytes, context: Any) -> bytes:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled_at.append(time.perf_counter())
            raise
        return b""

    async with grpc_server({"Slow": grpc.unary_unary_rpc_method_handler(slow)}) as target:
        channel = tether.grpc.sync_insecure_channel(target)
        slow_call = channel.unary_unary(method("Slow"))

        over_timeout = raising(UpstreamTimeout, lambda: slow_call.with_call(b"", timeout=0.1))
        try:
            start = time.perf_counter()
            exceeded = await in_thread(0.3, raising(DeadlineExceeded, lambda: slow_call(b"")))
            took = time.perf_counter() - start
            await wait_until(lambda: cancelled_at, bool, 2)
            timed_out = await in_thread(5, over_timeout)
        finally:
            channel.close()
    assert 0.25 < took < 0.3 + LATE
    assert cancelled_at[0] - start < 0.3 + LATE
    assert isinstance(exceeded.__cause__, grpc.RpcError)
    assert isinstance(timed_out.__cause__, grpc.RpcError)


async def test_no_call_is_sent_when_the_budget_is_gone() -> None:
    """4 ms left (below the 5 ms margin + 1 ms): DeadlineExceeded, and the server saw nothing,
    for every shape."""
    handlers, calls = counting_handler()
    async with grpc_server(handlers) as target:

        def attempts() -> int:
            refused = 0
            with tether.grpc.sync_insecure_channel(target) as channel:
                for attempt in (
                    lambda: channel.unary_unary(method("Count"))(b""),
                    lambda: channel.unary_unary(method("Count")).future(b""),
                    lambda: channel.unary_stream(method("Count"))(b""),
                    lambda: channel.stream_stream(method("Count"))(iter([b""])),
                ):
                    with pytest.raises(DeadlineExceeded, match="not sent"):
                        attempt()
                    refused += 1
            return refused

        assert await in_thread(0.004, attempts) == 4
    assert calls == []


async def test_a_bad_explicit_timeout_is_a_value_error_and_nothing_is_sent() -> None:
    """The synchronous channel follows the same rule as the aio one: `timeout=` must be a
    positive finite number of seconds, with or without the thread's budget."""
    handlers, calls = counting_handler()
    async with grpc_server(handlers) as target:

        def attempts() -> int:
            refused = 0
            with tether.grpc.sync_insecure_channel(target) as channel:
                for bad in (0, -1, float("nan"), float("inf"), "5"):
                    with pytest.raises(ValueError, match="timeout"):
                        channel.unary_unary(method("Count"))(b"", timeout=bad)
                    refused += 1
            return refused

        assert await in_thread(2, attempts) == 5
        assert await in_thread(None, attempts) == 5
    assert calls == []


async def test_unavailable_server_is_upstream_unavailable() -> None:
    def call() -> None:
        with tether.grpc.sync_insecure_channel(f"127.0.0.1:{free_port()}") as channel:
            channel.unary_unary(method("Echo"))(b"")

    with pytest.raises(UpstreamUnavailable, match="unavailable"):
        await in_thread(2, call)


async def test_other_statuses_stay_grpcs_own_error() -> None:
    """A handler's abort(NOT_FOUND) reaches the thread as grpc's RpcError, unchanged."""

    async def missing(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    async with grpc_server({"Missing": grpc.unary_unary_rpc_method_handler(missing)}) as target:

        def call() -> None:
            with tether.grpc.sync_insecure_channel(target) as channel:
                channel.unary_unary(method("Missing"))(b"")

        with pytest.raises(grpc.RpcError) as caught:
            await in_thread(2, call)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert caught.value.__cause__ is None


async def test_a_channel_built_by_hand_is_wrapped_and_keeps_its_interceptors() -> None:
    """`SyncChannel(grpc.intercept_channel(...))`: the user's interceptor still runs, and the
    call passes the budget on."""
    seen: list[str] = []

    class Recording(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            seen.append(details.method)
            return continuation(details, request)

    async with grpc_server(REPORTERS) as target:

        def call() -> bytes:
            intercepted = grpc.intercept_channel(grpc.insecure_channel(target), Recording())
            with tether.grpc.SyncChannel(intercepted) as channel:
                answer: bytes = channel.unary_unary(method("Budget"))(b"")
                return answer

        left, _ = parsed(await in_thread(0.5, call))
    assert seen == [method("Budget")]
    assert 0.3 < left <= 0.495


@pytest.mark.parametrize("channel", [None, "127.0.0.1:1", object()])
def test_something_other_than_a_synchronous_channel_is_refused(channel: Any) -> None:
    with pytest.raises(TypeError, match=r"synchronous grpc\.Channel"):
        tether.grpc.SyncChannel(channel)


async def test_a_grpc_aio_channel_is_refused_with_the_right_class_named() -> None:
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(TypeError, match=r"tether\.grpc\.Channel"):
            tether.grpc.SyncChannel(channel)  # type: ignore[arg-type]


@pytest.mark.parametrize("margin", [-1, float("nan"), float("inf"), "5", True, None])
def test_bad_margins_are_refused(margin: Any) -> None:
    with pytest.raises(ValueError, match="margin"):
        tether.grpc.sync_insecure_channel("127.0.0.1:1", margin=margin)
    with grpc.insecure_channel("127.0.0.1:1") as plain, pytest.raises(ValueError, match="margin"):
        tether.grpc.SyncChannel(plain, margin=margin)


async def test_deadline_exceeded_answered_early_is_the_callees_own_timeout() -> None:
    """From a thread with 5 s left, a callee that answers DEADLINE_EXCEEDED after 50 ms: the
    thread gets UpstreamTimeout (the callee's own limit), not DeadlineExceeded."""

    async with grpc_server({"GivesUp": gives_up_after_50_ms()}) as target:
        channel = tether.grpc.sync_insecure_channel(target)
        call = channel.unary_unary(method("GivesUp"))
        try:
            failed = await in_thread(5, raising(UpstreamTimeout, lambda: call(b"")))
        finally:
            channel.close()
    assert "s of the call's time left: its query timed out" in str(failed)


async def test_streaming_calls_from_a_thread_raise_tethers_errors() -> None:
    """From a thread with 300 ms left, through tether's synchronous channel: a server stream
    that stalls fails with DeadlineExceeded as it is iterated, and a stream-unary call with
    DeadlineExceeded (grpc's RpcError the cause); an explicit shorter timeout is
    UpstreamTimeout."""
    from .test_grpc import _slow_streams

    async with grpc_server(_slow_streams()) as target:
        channel = tether.grpc.sync_insecure_channel(target)
        us = channel.unary_stream(method("US"))
        su = channel.stream_unary(method("SU"))
        try:
            for calling in (lambda: list(us(b"")), lambda: su(iter([b"a"]))):
                exceeded = await in_thread(0.3, raising(DeadlineExceeded, calling))
                assert isinstance(exceeded.__cause__, grpc.RpcError)
            timed_out = raising(UpstreamTimeout, lambda: list(us(b"", timeout=0.1)))
            await in_thread(5, timed_out)
        finally:
            channel.close()
