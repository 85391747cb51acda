"""tether.grpc.sync_server(): tether's interceptor on grpc's synchronous server
(`grpc.server(ThreadPoolExecutor())`), real servers and channels on loopback, all four shapes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

import tether.grpc
from tether import (
    DeadlineExceeded,
    UpstreamUnavailable,
    check_deadline,
    current_request_id,
    time_remaining,
)

from .test_grpc_sync_handlers import HANDLERS as REPORTERS

pytestmark = pytest.mark.integration

SERVICE = "test.Sync"
Code = grpc.StatusCode


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


@contextmanager
def sync_grpc_server(
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]], **settings: Any
) -> Iterator[str]:
    """A tether-wrapped synchronous grpc server with `handlers`; yields its target."""
    server = tether.grpc.sync_server(ThreadPoolExecutor(8), **settings)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(5)


def parsed(answer: bytes) -> tuple[float | None, str]:
    left, request_id = answer.decode().split()
    return (None if left == "none" else float(left)), request_id


def every_shape(channel: grpc.Channel, **kwargs: Any) -> list[bytes]:
    return [
        channel.unary_unary(method("UnaryUnary"))(b"", **kwargs),
        *channel.unary_stream(method("UnaryStream"))(b"", **kwargs),
        channel.stream_unary(method("StreamUnary"))(iter([b"a", b"b"]), **kwargs),
        *channel.stream_stream(method("StreamStream"))(iter([b"x", b"y"]), **kwargs),
    ]


def failure(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def log_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[logging.LogRecord]:
    """The per-call log lines, once there are `count` (a streaming call's line can follow its
    client's end by a moment), or after 2 s."""
    give_up = time.monotonic() + 2
    while True:
        lines = [r for r in caplog.records if hasattr(r, "grpc_code")]
        if len(lines) >= count or time.monotonic() > give_up:
            return lines
        time.sleep(0.01)


def test_every_shape_gets_the_clients_deadline_and_request_id() -> None:
    """A 2 s client timeout is each handler's ambient deadline; the request id comes from the
    metadata; one log line per call with its method, status and request id."""
    with (
        sync_grpc_server(REPORTERS) as target,
        grpc.insecure_channel(target) as channel,
    ):
        answers = every_shape(channel, timeout=2, metadata=[("x-request-id", "req-sync")])
    assert len(answers) == 6
    for answer in answers:
        left, request_id = parsed(answer)
        assert left is not None
        assert 1.8 < left <= 2.03
        assert request_id == "req-sync"


def test_one_log_line_per_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tether.grpc")
    with sync_grpc_server(REPORTERS) as target, grpc.insecure_channel(target) as channel:
        every_shape(channel, metadata=[("x-request-id", "req-log")])
        lines = log_lines(caplog, 4)
    assert sorted(line.grpc_method for line in lines) == sorted(  # type: ignore[attr-defined]
        method(name) for name in REPORTERS
    )
    assert {line.grpc_code for line in lines} == {"OK"}  # type: ignore[attr-defined]
    assert {line.request_id for line in lines} == {"req-log"}  # type: ignore[attr-defined]


def test_the_log_line_says_the_status_a_handler_set_and_returned_with(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`context.set_code()` and a return, on grpc's synchronous server: the client's status is
    the line's."""

    def missing(request: bytes, context: Any) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        return b""

    caplog.set_level(logging.INFO, logger="tether.grpc")
    handlers = {"Missing": grpc.unary_unary_rpc_method_handler(missing)}
    with sync_grpc_server(handlers) as target, grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(method("Missing"))(b"")
        (line,) = log_lines(caplog, 1)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert line.grpc_code == "NOT_FOUND"  # type: ignore[attr-defined]


def test_without_a_client_deadline_the_default_budget_applies() -> None:
    """grpc's synchronous server reports "no deadline" as billions of years; tether reads it
    as none, so the default budget applies (and a new request id is made). The handler's own
    `context.time_remaining()` stays what grpc reports."""

    def grpcs_own(request: bytes, context: Any) -> bytes:
        return repr(context.time_remaining()).encode()

    handlers = {**REPORTERS, "Own": grpc.unary_unary_rpc_method_handler(grpcs_own)}
    with (
        sync_grpc_server(handlers, default_budget=3) as target,
        grpc.insecure_channel(target) as channel,
    ):
        answers = every_shape(channel)
        assert float(channel.unary_unary(method("Own"))(b"")) > 1e18
    ids = set()
    for answer in answers:
        left, request_id = parsed(answer)
        assert left is not None
        assert 2.9 < left <= 3
        ids.add(request_id)
    assert len(ids) == 4  # one per call, the stream's responses share theirs


def test_budgets_are_clamped_and_deadline_metadata_is_read() -> None:
    """A 30 s client timeout is clamped to max_budget (5 s); an earlier `x-request-timeout`
    metadata deadline wins; an invalid one is INVALID_ARGUMENT naming it, for every shape."""
    with (
        sync_grpc_server(REPORTERS, default_budget=3, max_budget=5) as target,
        grpc.insecure_channel(target) as channel,
    ):
        clamped = parsed(channel.unary_unary(method("UnaryUnary"))(b"", timeout=30))[0]
        earlier = [
            parsed(answer)[0]
            for answer in every_shape(channel, timeout=4, metadata=[("x-request-timeout", "700")])
        ]
        refused = [
            failure(lambda call=call: call())  # type: ignore[misc]
            for call in (
                lambda: every_shape(channel, metadata=[("x-request-timeout", "soon")])[0],
                lambda: list(
                    channel.unary_stream(method("UnaryStream"))(
                        b"", metadata=[("x-request-timeout", "soon")]
                    )
                ),
            )
        ]
    assert clamped is not None
    assert 4.9 < clamped <= 5
    assert all(left is not None and 0.6 < left <= 0.7 for left in earlier), earlier
    for error in refused:
        assert error.code() is Code.INVALID_ARGUMENT
        assert "x-request-timeout" in (error.details() or "")


def test_a_malformed_request_id_is_invalid_argument_for_every_shape() -> None:
    """As on grpc.aio: an x-request-id HTTP's middleware would refuse is refused."""
    with sync_grpc_server(REPORTERS) as target, grpc.insecure_channel(target) as channel:
        bad = [("x-request-id", "two words")]
        refused = [
            failure(lambda: channel.unary_unary(method("UnaryUnary"))(b"", metadata=bad)),
            failure(lambda: list(channel.unary_stream(method("UnaryStream"))(b"", metadata=bad))),
        ]
        good = channel.unary_unary(method("UnaryUnary"))(b"", metadata=[("x-request-id", "r-1")])
    for error in refused:
        assert error.code() is Code.INVALID_ARGUMENT
        assert "x-request-id" in (error.details() or "")
    assert parsed(good)[1] == "r-1"


def test_unbounded_methods_get_no_budget_from_the_server() -> None:
    with (
        sync_grpc_server(REPORTERS, unbounded_methods=[f"/{SERVICE}/UnaryStream"]) as target,
        grpc.insecure_channel(target) as channel,
    ):
        streamed = [parsed(a)[0] for a in channel.unary_stream(method("UnaryStream"))(b"")]
        unary = parsed(channel.unary_unary(method("UnaryUnary"))(b""))[0]
    assert streamed == [None, None]
    assert unary is not None
    assert unary > 9


def test_exceptions_become_statuses_without_their_text(caplog: pytest.LogCaptureFixture) -> None:
    """The safety net: a plain exception is INTERNAL "internal error" (grpc's synchronous
    server alone answers UNKNOWN with the exception's text), logged with its traceback and
    request id; TimeoutError and DeadlineExceeded are DEADLINE_EXCEEDED, UpstreamUnavailable
    UNAVAILABLE (also in an exception group); an abort passes through as it is; the server
    keeps serving. For streams too."""
    raised: dict[str, BaseException] = {
        "Secret": RuntimeError("secret: password=hunter2"),
        "Timeout": TimeoutError("took too long"),
        "Exceeded": DeadlineExceeded("deadline exceeded: budget ran out"),
        "Unavailable": UpstreamUnavailable("db down"),
        "Group": ExceptionGroup("fanned out", [UpstreamUnavailable("db down")]),
    }

    def raising(request: bytes, context: Any) -> bytes:
        raise raised[dict(context.invocation_metadata())["which"]]

    def raising_stream(request: bytes, context: Any) -> Iterator[bytes]:
        yield b"first"
        raise RuntimeError("secret in a stream")

    def aborting(request: bytes, context: Any) -> bytes:
        context.abort(Code.NOT_FOUND, "no such order")

    handlers = {
        **REPORTERS,
        "Raise": grpc.unary_unary_rpc_method_handler(raising),
        "RaiseStream": grpc.unary_stream_rpc_method_handler(raising_stream),
        "Abort": grpc.unary_unary_rpc_method_handler(aborting),
    }
    caplog.set_level(logging.INFO, logger="tether.grpc")
    with sync_grpc_server(handlers) as target, grpc.insecure_channel(target) as channel:
        statuses = {}
        for name in raised:
            error = failure(
                lambda name=name: channel.unary_unary(method("Raise"))(  # type: ignore[misc]
                    b"", metadata=[("which", name), ("x-request-id", f"req-{name}")]
                )
            )
            statuses[name] = (error.code(), error.details())
        stream = channel.unary_stream(method("RaiseStream"))(b"")
        assert next(stream) == b"first"
        streamed = failure(lambda: next(stream))
        aborted = failure(lambda: channel.unary_unary(method("Abort"))(b""))
        still_serving = parsed(channel.unary_unary(method("UnaryUnary"))(b""))
        lines = log_lines(caplog, 8)
    assert statuses == {
        "Secret": (Code.INTERNAL, "internal error"),
        "Timeout": (Code.DEADLINE_EXCEEDED, "deadline exceeded"),
        "Exceeded": (Code.DEADLINE_EXCEEDED, "deadline exceeded"),
        "Unavailable": (Code.UNAVAILABLE, "a dependency is unavailable"),
        "Group": (Code.UNAVAILABLE, "a dependency is unavailable"),
    }
    assert (streamed.code(), streamed.details()) == (Code.INTERNAL, "internal error")
    assert (aborted.code(), aborted.details()) == (Code.NOT_FOUND, "no such order")
    assert still_serving[0] is not None
    tracebacks = [r for r in caplog.records if r.exc_info and "answered INTERNAL" in r.message]
    assert {r.request_id for r in tracebacks} >= {"req-Secret"}  # type: ignore[attr-defined]
    codes = sorted(line.grpc_code for line in lines)  # type: ignore[attr-defined]
    assert codes == sorted(
        [
            *("INTERNAL", "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "UNAVAILABLE"),
            *("UNAVAILABLE", "INTERNAL", "NOT_FOUND", "OK"),
        ]
    )


@pytest.mark.parametrize("too_late", [False, True], ids=["in-time", "after-the-deadline"])
def test_an_abort_is_logged_with_the_status_the_caller_got(
    caplog: pytest.LogCaptureFixture, too_late: bool
) -> None:
    """A handler's abort is the call's status, unless grpc had already ended the call: one
    that aborts after its caller's deadline is logged DEADLINE_EXCEEDED, as the caller got (it
    was logged NOT_FOUND, an abort never sent)."""

    def aborting(request: bytes, context: Any) -> bytes:
        if too_late:
            time.sleep(0.3)  # past the caller's 100 ms
        context.abort(Code.NOT_FOUND, "no such order")
        return b"never"

    caplog.set_level(logging.INFO, logger="tether.grpc")
    handlers = {"Abort": grpc.unary_unary_rpc_method_handler(aborting)}
    with sync_grpc_server(handlers) as target, grpc.insecure_channel(target) as channel:
        deadline = 0.1 if too_late else 5.0
        failed = failure(lambda: channel.unary_unary(method("Abort"))(b"", timeout=deadline))
        expected = Code.DEADLINE_EXCEEDED if too_late else Code.NOT_FOUND
        assert failed.code() is expected  # type: ignore[attr-defined]
        (line,) = log_lines(caplog, 1)
    assert line.grpc_code == expected.name  # type: ignore[attr-defined]


def test_a_raising_auth_interceptor_1000_times_then_a_good_call() -> None:
    """An interceptor after tether's that raises on a bad token (the seed's JWT panic): each
    call gets INTERNAL with no exception text; 1,000 in a row, then a good call succeeds."""

    class Auth(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            token = dict(details.invocation_metadata).get("authorization", "")
            if token != "Bearer good":
                raise ValueError(f"token {token!r} is not a JWT: index out of range")
            return continuation(details)

    with (
        sync_grpc_server(REPORTERS, interceptors=[Auth()]) as target,
        grpc.insecure_channel(target) as channel,
    ):
        call = channel.unary_unary(method("UnaryUnary"))
        for _ in range(1000):
            error = failure(lambda: call(b"", metadata=[("authorization", "Bearer bad")]))
            assert (error.code(), error.details()) == (Code.INTERNAL, "internal error")
        good = call(b"", metadata=[("authorization", "Bearer good")])
    assert parsed(good)[0] is not None


def test_a_handler_that_checks_the_deadline_ends_with_it() -> None:
    """No cancellation reaches a thread: a handler looping over 10 ms steps with
    check_deadline() under a 300 ms default budget ends with DEADLINE_EXCEEDED at 300 ms."""
    ended: list[float] = []

    def batches(request: bytes, context: Any) -> bytes:
        try:
            for _ in range(300):
                check_deadline()
                time.sleep(0.01)
            return b"done"
        finally:
            ended.append(time.perf_counter())

    handlers = {"Batches": grpc.unary_unary_rpc_method_handler(batches)}
    with (
        sync_grpc_server(handlers, default_budget=0.3) as target,
        grpc.insecure_channel(target) as channel,
    ):
        start = time.perf_counter()
        error = failure(lambda: channel.unary_unary(method("Batches"))(b""))
    assert error.code() is Code.DEADLINE_EXCEEDED
    assert 0.29 <= ended[0] - start < 0.3 + 0.1


def test_a_stream_that_its_client_leaves_is_closed_in_its_calls_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stream yielding every 20 ms: its client cancels after three responses, another
    stream's client deadline (300 ms) passes. grpc drops each generator once it notices; the
    generator is closed then, its `finally` still sees its call's request id, and the log
    lines say CANCELLED and DEADLINE_EXCEEDED."""
    closed: dict[str, str | None] = {}
    all_closed = threading.Event()

    def ticking(request: bytes, context: Any) -> Iterator[bytes]:
        try:
            while True:
                time.sleep(0.02)
                yield b"tick"
        finally:
            closed[request.decode()] = current_request_id()
            if len(closed) == 2:
                all_closed.set()

    caplog.set_level(logging.INFO, logger="tether.grpc")
    handlers = {"Ticks": grpc.unary_stream_rpc_method_handler(ticking)}
    with sync_grpc_server(handlers) as target, grpc.insecure_channel(target) as channel:
        ticks = channel.unary_stream(method("Ticks"))
        cancelled = ticks(b"cancelled", metadata=[("x-request-id", "req-cancelled")])
        for _ in range(3):
            next(cancelled)
        cancelled.cancel()
        expiring = ticks(b"expired", timeout=0.3, metadata=[("x-request-id", "req-expired")])
        error = failure(lambda: list(expiring))
        assert all_closed.wait(2)
        lines = log_lines(caplog, 2)
    assert error.code() is Code.DEADLINE_EXCEEDED
    assert closed == {"cancelled": "req-cancelled", "expired": "req-expired"}
    codes = {line.request_id: line.grpc_code for line in lines}  # type: ignore[attr-defined]
    assert codes == {"req-cancelled": "CANCELLED", "req-expired": "DEADLINE_EXCEEDED"}


def test_a_handler_passes_what_is_left_to_the_next_service() -> None:
    """Chain of synchronous services: A's handler works 100 ms, then calls B through
    tether's SyncChannel. B's budget is A's less the work and the margin, with the same id."""
    seen_by_a: list[float] = []
    with sync_grpc_server(REPORTERS) as b_target:
        downstream = tether.grpc.sync_insecure_channel(b_target)

        def forward(request: bytes, context: Any) -> bytes:
            seen_by_a.append(time_remaining() or 0.0)
            time.sleep(0.1)
            answer: bytes = downstream.unary_unary(method("UnaryUnary"))(b"")
            return answer

        handlers = {"Forward": grpc.unary_unary_rpc_method_handler(forward)}
        try:
            with (
                sync_grpc_server(handlers) as a_target,
                grpc.insecure_channel(a_target) as channel,
            ):
                answer = channel.unary_unary(method("Forward"))(
                    b"", timeout=1, metadata=[("x-request-id", "req-chain")]
                )
        finally:
            downstream.close()
    left_at_b, request_id = parsed(answer)
    assert request_id == "req-chain"
    assert left_at_b is not None
    assert seen_by_a[0] - 0.1 - 0.1 - 0.05 < left_at_b <= seen_by_a[0] - 0.1 - 0.005


@pytest.mark.parametrize("pool", [None, 8, "pool", ThreadPoolExecutor])
def test_a_thread_pool_that_is_not_an_executor_is_refused(pool: Any) -> None:
    with pytest.raises(TypeError, match=r"thread_pool must be a concurrent\.futures\.Executor"):
        tether.grpc.sync_server(pool)


@pytest.mark.parametrize(
    "settings",
    [
        {"default_budget": 0},
        {"default_budget": -1},
        {"max_budget": float("inf")},
        {"default_budget": 10, "max_budget": 5},
        {"default_budget": "5"},
        {"unbounded_methods": "/test.Sync"},
        {"unbounded_methods": ["no-slash"]},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any]) -> None:
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match=r"budget|unbounded"):
        tether.grpc.sync_server(pool, **settings)
    with pytest.raises(ValueError, match=r"budget|unbounded"):
        tether.grpc.TetherSyncServerInterceptor(**settings)


def test_an_answer_the_serializer_refuses_is_internal_at_once() -> None:
    """On grpc's synchronous server, a handler that answers the wrong type (a dict where bytes
    go): INTERNAL 'internal error' at once. grpc alone never answers such a call, unary or
    stream: it hangs until the client's deadline (for good without one). The streaming
    handler's generator is closed in the call's context."""
    closed: list[str | None] = []

    def wrong_unary(request: bytes, context: Any) -> Any:
        return {"token": "s3cret"}

    def wrong_stream(request: bytes, context: Any) -> Iterator[Any]:
        try:
            yield b"first"
            yield {"token": "s3cret"}
            yield b"never"
        finally:
            closed.append(current_request_id())

    handlers = {
        "WrongUnary": grpc.unary_unary_rpc_method_handler(wrong_unary),
        "WrongStream": grpc.unary_stream_rpc_method_handler(wrong_stream),
        **REPORTERS,
    }
    with sync_grpc_server(handlers) as target, grpc.insecure_channel(target) as channel:
        start = time.monotonic()
        unary = failure(lambda: channel.unary_unary(method("WrongUnary"))(b"", timeout=5))
        got: list[bytes] = []
        metadata = (("x-request-id", "req-wrong"),)
        stream = channel.unary_stream(method("WrongStream"))(b"", timeout=5, metadata=metadata)
        streamed = failure(lambda: got.extend(stream))
        took = time.monotonic() - start
        assert len(every_shape(channel, timeout=5)) == 6
    for failed in (unary, streamed):
        assert failed.code() is Code.INTERNAL
        assert failed.details() == "internal error"
    assert got == [b"first"]
    assert took < 1
    assert closed == ["req-wrong"]


def test_a_request_the_deserializer_refuses_is_invalid_argument() -> None:
    """On grpc's synchronous server, every call shape: a request message the deserializer
    refuses is INVALID_ARGUMENT 'a request message could not be decoded' (grpc alone answers
    INTERNAL, as if the server had failed); good requests are decoded as before."""
    from .test_grpc import _json_handlers

    handlers = _json_handlers(asynchronous=False)
    with sync_grpc_server(handlers) as target, grpc.insecure_channel(target) as channel:
        for shape in handlers:
            callable_ = getattr(channel, shape)(method(shape))

            def call(requests: list[bytes], shape: str = shape, callable_: Any = callable_) -> Any:
                sent = requests[0] if shape.startswith("unary") else iter(requests)
                answer = callable_(sent, timeout=5)
                return b"".join(answer) if shape.endswith("stream") else answer

            assert call([b'{"n": 2}', b'{"n": 3}']) in (b"2", b"5")
            failed = failure(lambda call=call: call([b"{not json"]))
            assert failed.code() is Code.INVALID_ARGUMENT, shape
            assert failed.details() == "a request message could not be decoded"
