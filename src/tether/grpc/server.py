"""The budget inside grpc.aio services: one server interceptor, placed first by `server()`.

For every call, of all four shapes, in this order (outermost first):

1. Safety net: an exception from the handler *or from an interceptor after this one* becomes
   `INTERNAL` with a generic message (never the exception's text); `TimeoutError` and
   `DeadlineExceeded` become `DEADLINE_EXCEEDED`, `UpstreamUnavailable` becomes `UNAVAILABLE`
   (an exception group holding only such outcomes, from a handler that fans out, as its first
   one); `context.abort(...)` passes through untouched (from a fan-out's task too, inside a
   group: `_ended_by_grpc`). A CancelledError while grpc is not
   cancelling the call is a bug (`tether.errors.stray_cancellation`): `INTERNAL`, where grpc
   alone would send no status at all. The server keeps serving. Streaming
   handlers' responses are written here (see `_streaming`), so a response the serializer
   refuses is caught by this net too. A request the deserializer refuses is the caller's
   mistake: `INVALID_ARGUMENT` (see `decoding`).
2. Request id: `x-request-id` from the metadata (or a new one) becomes the ambient request id,
   and the caller's `traceparent` is passed on by tether's clients (grpc itself hands the
   handler only the last of several). A malformed id (the rule of `tether.request_id`, as for
   HTTP's `X-Request-ID`), or one given twice with different values, is answered
   `INVALID_ARGUMENT`.
3. Deadline: `context.time_remaining()` (the client's deadline) becomes the ambient deadline,
   clamped to `max_budget`; `None` means the client set none and `default_budget` applies.
   When the call also carries tether's deadline headers as metadata (`x-request-timeout`,
   milliseconds, or `x-request-deadline`, Unix milliseconds; callers in any language can send
   them), they are read by the same codec as HTTP's and the earlier deadline wins; a value the
   codec refuses is answered `INVALID_ARGUMENT`, naming it. The
   handler runs in a deadline block and is cancelled at expiry. The block is the call's own:
   a deadline in the context grpc created the call's task from is ignored. When the deadline
   in force is the client's own, grpc cancels the handler at it, and the block sets no timer
   of its own (one less per call); a default, clamped or metadata deadline gets tether's.
   Methods in `unbounded_methods`, and gRPC's own long-lived streams (health `Watch`, server
   reflection), get no budget from the server: the client's deadline (or tether's metadata)
   applies unclamped, and a call without one runs without a deadline (long-lived streams that
   end when their client cancels).
4. One log line per call on `tether.grpc`: method, status, duration, budget, request id.

Synchronous (`def`) handlers get the same safety net, request id, log line and ambient
deadline. A unary-response one runs as grpc.aio runs it, in its `migration_thread_pool`, and
is set up in the worker thread. No cancellation reaches a thread: a client's own deadline ends
the call for the client (grpc does that), but the handler runs on until it returns, and a
server-side budget (`default_budget`, `max_budget`, metadata) is known to it, not enforced.
Such handlers call `tether.check_deadline()` between steps and bound their I/O by the budget.
A streaming-response one (a `def` generator) is stepped by tether instead, one response per
worker-thread step, from the call's task (see `_sync_streams`): its call ends at the deadline
like an async handler's, and the generator is closed after the step in progress, where
grpc.aio would keep a thread for good.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from concurrent.futures import Executor
from contextvars import ContextVar
from typing import Any, NoReturn, Protocol

import grpc
import grpc.aio

from tether import _clock
from tether._logging import log_fields
from tether._settings import PathPrefixes, server_budgets
from tether.deadline import (
    DeadlineScope,
    deadline_for_request,
    deadline_for_thread,
)
from tether.errors import (
    DeadlineExceeded,
    UpstreamUnavailable,
    failure_summary,
    leaves_of,
    reported_failure,
    stray_cancellation,
)
from tether.grpc._sync_streams import run_in_threads
from tether.request_id import (
    REPEATED_WITH_DIFFERENT_VALUES,
    REQUEST_ID_HEADER,
    REQUEST_ID_PATTERN,
    REQUEST_ID_RULE,
    new_request_id,
    read_incoming,
    reset_request_id,
    set_request_id,
)
from tether.tracing import (
    TRACEPARENT_HEADER,
    reset_incoming_traceparent,
    set_incoming_traceparent,
)
from tether.wire import (
    REQUEST_DEADLINE,
    REQUEST_TIMEOUT,
    InvalidDeadlineHeader,
    deadline_from_headers,
)

_current_task = asyncio.current_task
log = logging.getLogger("tether.grpc")

__all__ = ["TetherServerInterceptor", "server"]

Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Any, Any] | None"]
]
_GENERIC = "internal error"
_OK = grpc.StatusCode.OK


class TetherServerInterceptor(grpc.aio.ServerInterceptor):
    """Safety net, request id, deadline and a log line for every call; put it first."""

    def __init__(
        self,
        *,
        default_budget: float = 10.0,
        max_budget: float = 60.0,
        unbounded_methods: Iterable[str] = (),
        thread_pool: Executor | None = None,
    ) -> None:
        self.default_budget, self.max_budget = server_budgets(default_budget, max_budget)
        if thread_pool is not None:
            check_thread_pool(thread_pool)
        # Where synchronous streaming handlers run (None: the event loop's default executor).
        self.thread_pool = thread_pool
        # `/package.Service/Method`, or `/package.Service` for all of a service's methods.
        self.unbounded_methods = unbounded_methods_of(unbounded_methods)
        self._wrapped: WrappedHandlers = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        _arriving.set(handler_call_details)  # read by this call's handler (see _metadata_of)
        try:
            handler = await continuation(handler_call_details)
        except Exception:  # an interceptor after this one failed (the seed's JWT panic)
            method = handler_call_details.method
            log.exception("grpc %s: an interceptor raised; answered INTERNAL", method)
            return grpc.stream_stream_rpc_method_handler(_abort_internal)
        if handler is None:
            return None
        return wrapped_once(self._wrapped, handler_call_details.method, handler, _wrap, self)


# gRPC's own streams that last as long as their client listens: the health service's Watch
# (grpc clients that check health keep one open per connection, and a cut one takes the
# connection out of balancing until a new one answers) and server reflection (one per
# grpcurl-style session). Unbounded on every tether server, besides `unbounded_methods`.
GRPC_LONG_LIVED_STREAMS = (
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


def unbounded_methods_of(value: object) -> PathPrefixes:
    """A server's `unbounded_methods` (checked: a list of method names or service prefixes),
    with gRPC's own long-lived streams."""
    given = PathPrefixes("unbounded_methods", value)
    return PathPrefixes("unbounded_methods", [*given.entries, *GRPC_LONG_LIVED_STREAMS])


# Per method: the handler grpc found and tether's wrapper of it.
WrappedHandlers = dict[
    str, tuple["grpc.RpcMethodHandler[Any, Any]", "grpc.RpcMethodHandler[Any, Any]"]
]


def wrapped_once(
    wrapped: WrappedHandlers,
    method: str,
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap: Callable[[grpc.RpcMethodHandler[Any, Any], Any, str], grpc.RpcMethodHandler[Any, Any]],
    policy: Any,
) -> grpc.RpcMethodHandler[Any, Any]:
    """`wrap(handler, policy, method)`, made once per method and handler: the wrapper reads
    everything per call from the call's context. (Threads of a synchronous server may race to
    make it: both make the same wrapper, harmlessly.)"""
    known = wrapped.get(method)
    if known is not None and known[0] is handler:
        return known[1]
    made = wrap(handler, policy, method)
    wrapped[method] = (handler, made)
    return made


def check_thread_pool(thread_pool: object) -> None:
    if not isinstance(thread_pool, Executor):
        raise TypeError(f"thread_pool must be a concurrent.futures.Executor, got {thread_pool!r}")


async def _abort_internal(
    request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    await context.abort(grpc.StatusCode.INTERNAL, _GENERIC)


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    policy: TetherServerInterceptor,
    method: str,
) -> grpc.RpcMethodHandler[Any, Any]:
    unbounded = method in policy.unbounded_methods
    behavior, make, streams_responses = shape_of(handler)
    # Requests are decoded inside the safety net (see `decoding`): a single one by the guard;
    # a stream's by grpc, through the wrapped deserializer, as the handler reads them.
    decode = decoding(handler.request_deserializer)
    if streams_requests(handler):
        request_deserializer, decode = decode, None
    else:
        request_deserializer = None
    if not streams_responses:  # the response is serialized by the guard (see `serializing`)
        guard = _unary if _is_async(behavior) else _sync_unary
        serialize = serializing(handler.response_serializer)
        guarded = guard(behavior, policy, method, unbounded, decode, serialize)
        return make(guarded, request_deserializer, None)
    if not _is_async(behavior):  # stepped by tether, not grpc
        behavior = run_in_threads(
            behavior,
            request_streaming=handler.stream_stream is not None,
            thread_pool=policy.thread_pool,
        )
    # Responses go through `context.write()`, which serializes them in the guard's task.
    streamed = _streaming(behavior, policy, method, unbounded, decode)
    return make(streamed, request_deserializer, handler.response_serializer)


def streams_requests(handler: grpc.RpcMethodHandler[Any, Any]) -> bool:
    return handler.stream_unary is not None or handler.stream_stream is not None


Decode = Callable[[bytes], Any]


class UndecodableRequest(ValueError):
    """A request message the method's deserializer refused: the caller's malformed input,
    answered `INVALID_ARGUMENT` (grpc alone answers `UNKNOWN` with the exception's text, or
    `INTERNAL`, as if the server had failed)."""


def decoding(deserializer: Decode | None) -> Decode | None:
    """The method's request deserializer, raising `UndecodableRequest` when it fails (None
    without one: requests stay bytes)."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            raise UndecodableRequest(f"{type(exc).__name__} from the deserializer") from exc

    return decode


Serialize = Callable[[Any], bytes]


def serializing(serializer: Serialize | None) -> Serialize:
    """A method's response serializer, for tether's guard to run on the handler's answer, so
    that its failure (a handler answering the wrong type, or None) is caught by the safety net:
    grpc runs it after the handler, outside any guard, and answers `UNKNOWN` with the
    exception's text (grpc.aio), or, for a response that is not bytes, never answers (grpc's
    synchronous server: the call hangs until its deadline). Without a serializer a response
    must already be bytes."""
    if serializer is None:
        return _bytes_only
    return serializer


def _bytes_only(response: Any) -> bytes:
    if isinstance(response, bytes):
        return response
    raise TypeError(f"a response must be bytes (no serializer), got {type(response).__name__}")


def serialized(response: Any, serialize: Serialize, context: Any) -> bytes:
    """`response` serialized; when that fails after the handler set a status other than OK
    (`context.set_code()`), nothing: grpc sends no response with such a status."""
    try:
        return serialize(response)
    except Exception:
        if _code_of(context, default=_OK) is not _OK:
            return b""
        raise


def shape_of(
    handler: grpc.RpcMethodHandler[Any, Any],
) -> tuple[Callable[..., Any], Callable[..., grpc.RpcMethodHandler[Any, Any]], bool]:
    """A handler's one behaviour, grpc's factory for a handler of its shape, and whether it
    streams its responses."""
    if handler.unary_unary is not None:
        return handler.unary_unary, grpc.unary_unary_rpc_method_handler, False
    if handler.stream_unary is not None:
        return handler.stream_unary, grpc.stream_unary_rpc_method_handler, False
    if handler.unary_stream is not None:
        return handler.unary_stream, grpc.unary_stream_rpc_method_handler, True
    assert handler.stream_stream is not None  # a handler has exactly one behaviour
    return handler.stream_stream, grpc.stream_stream_rpc_method_handler, True


def _is_async(behavior: Any) -> bool:
    """grpc.aio's own test: anything else it runs in its `migration_thread_pool`."""
    return (
        inspect.isawaitable(behavior)
        or inspect.iscoroutinefunction(behavior)
        or inspect.isasyncgenfunction(behavior)
    )


class Budgets(Protocol):
    """What a call's bookkeeping reads from its server's interceptor (checked settings)."""

    default_budget: float
    max_budget: float


class _Call:
    """One call's bookkeeping: its ids and budget made ambient, and the log line at its end."""

    __slots__ = (
        "_context",
        "_id_token",
        "_trace_token",
        "budget",
        "code",
        "grpc_enforces",
        "method",
        "request_id",
        "started",
        "when",
    )
    when: float | None  # the call's deadline, on tether's clock; None: it has none
    budget: float | None  # the seconds it had when it arrived; None: no deadline
    grpc_enforces: bool  # grpc itself cancels the handler at `when` (the client's deadline)

    def __init__(
        self,
        policy: Budgets,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        unbounded: bool,
    ) -> None:
        metadata = _metadata_of(method, context)
        request_id, ids_differ, traceparent, carries_deadline = read_incoming(
            metadata, REQUEST_ID_HEADER, TRACEPARENT_HEADER, _DEADLINE_METADATA
        )
        if not isinstance(request_id, str):
            request_id = new_request_id()
        elif ids_differ or not _valid_request_id(request_id):
            raise MalformedRequestId(request_id, ids_differ)
        self.request_id = request_id
        self.method = method
        self.code = _OK  # what the call ended with, for the log line
        self._context = context
        remaining = context.time_remaining()
        budget: float | None
        if remaining is None or remaining > _NO_DEADLINE_ABOVE:
            budget = None if unbounded else policy.default_budget
            self.grpc_enforces = False
        elif unbounded:
            budget = remaining
            self.grpc_enforces = True
        else:
            budget = min(remaining, policy.max_budget)
            # grpc cancels the handler at the client's deadline by itself: when that deadline
            # is the call's, tether's block needs no timer of its own (armed=False below).
            self.grpc_enforces = remaining <= policy.max_budget
        now = _clock.monotonic()
        when = None if budget is None else now + budget  # budget: checked, finite
        if carries_deadline:  # tether's deadline headers, read as HTTP's; the earlier one wins
            asked = deadline_from_headers(metadata, received_at=now)  # InvalidDeadlineHeader
            if asked is not None and (when is None or asked.when < when):
                when = asked.when
                budget = max(when - now, 0.0)
                self.grpc_enforces = False
        self.budget = budget
        self.when = when
        self.started = now
        self._id_token = set_request_id(request_id)
        self._trace_token = set_incoming_traceparent(
            traceparent if isinstance(traceparent, str) else None
        )

    def block(self, task: asyncio.Task[Any]) -> DeadlineScope:
        """The handler's deadline block, in `task`: a plain `with` (no coroutines to enter).
        The budget is the call's own, whatever the task grpc created the call's task from
        was under."""
        return deadline_for_request(self.when, task, armed=not self.grpc_enforces)

    def ended_early(self) -> None:
        """Note how a call that grpc ended before its handler did ended: at its deadline, or
        cancelled by its client. grpc's cancellation at the client's deadline can arrive a
        little before the instant tether computed from `time_remaining()` (up to 0.3 ms seen,
        grpc 1.62): within `_DEADLINE_SLACK` of it, the deadline ended the call."""
        expired = self.when is not None and _clock.monotonic() >= self.when - _DEADLINE_SLACK
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED

    def end(self) -> None:
        """Undo what `__init__` made ambient and write the call's log line."""
        code = self.code
        reset_incoming_traceparent(self._trace_token)
        reset_request_id(self._id_token)
        if not log.isEnabledFor(logging.INFO):
            return
        if code is _OK:  # or what the handler set with context.set_code() and then returned
            code = _code_of(self._context, default=_OK)
        elapsed = (_clock.monotonic() - self.started) * 1000
        budget = "none" if self.budget is None else f"{self.budget * 1000:.1f}ms"
        log_fields(
            log,
            logging.INFO,
            "grpc %s %s %.1fms budget=%s request_id=%s",
            self.method,
            code.name,
            elapsed,
            budget,
            self.request_id,
            fields={
                "request_id": self.request_id,
                "grpc_method": self.method,
                "grpc_code": code.name,
                "duration_ms": elapsed,
            },
        )


_valid_request_id = re.compile(REQUEST_ID_PATTERN).fullmatch


class MalformedRequestId(ValueError):
    """An `x-request-id` that breaks the rule of `tether.request_id`, or is given twice with
    different values: the call is refused."""

    def __init__(self, value: str, repeated: bool = False) -> None:
        if repeated:
            super().__init__(f"{REQUEST_ID_HEADER} is {REPEATED_WITH_DIFFERENT_VALUES}")
            return
        shown = value if len(value) <= 64 else value[:64] + "..."
        super().__init__(f"invalid {REQUEST_ID_HEADER} {shown!r}: must be {REQUEST_ID_RULE}")


# What refuses a call before its handler runs: INVALID_ARGUMENT, naming the metadata.
Refused = (InvalidDeadlineHeader, MalformedRequestId)

# How far before a call's deadline grpc ending it still counts as the deadline (see
# `_Call.ended_early`).
_DEADLINE_SLACK = 0.002

# A call without a deadline: grpc.aio reports None, grpc's synchronous server ~9.2e18 seconds.
_NO_DEADLINE_ABOVE = 1e9

# tether's deadline headers as gRPC metadata (grpc keeps its own grpc-timeout to itself).
_DEADLINE_METADATA = frozenset({REQUEST_TIMEOUT, REQUEST_DEADLINE})

# The call details grpc.aio handed to `intercept_service` for the call being set up. grpc.aio
# runs the interceptors and then the handler in the call's own task, so the handler finds its
# call's details here; `context.invocation_metadata()` would build the same tuple again.
_arriving: ContextVar[grpc.HandlerCallDetails | None] = ContextVar(
    "tether.grpc.arriving", default=None
)


def _metadata_of(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    details = _arriving.get()
    if details is not None and details.method == method:
        return details.invocation_metadata or ()
    return context.invocation_metadata() or ()  # called some other way: ask the context


def _unary(
    behavior: Callable[..., Any],
    policy: TetherServerInterceptor,
    method: str,
    unbounded: bool,
    decode: Decode | None,
    serialize: Serialize,
) -> Callable[..., Awaitable[bytes]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            call = _Call(policy, method, context, unbounded)
        except Refused as exc:
            await _refuse(exc, method, context)
        try:
            if decode is not None:
                request = decode(request)
            task = _current_task()
            assert task is not None  # grpc.aio runs each call in its own task
            with call.block(task):
                return serialized(await behavior(request, context), serialize, context)
        except BaseException as exc:
            await _failed(exc, call, context)
            raise
        finally:
            call.end()

    return guarded


def _streaming(
    behavior: Callable[..., Any],
    policy: TetherServerInterceptor,
    method: str,
    unbounded: bool,
    decode: Decode | None,
) -> Callable[..., Awaitable[None]]:
    """Rule: the guard is a coroutine that writes the handler's responses itself (grpc.aio's
    reader/writer form), never a generator that grpc iterates. grpc's own loop over a
    generator leaves it suspended when a write fails (the client went away while the stream
    waited on flow control): it is then closed later by the garbage collector, in another
    task, where the call's context (request id, deadline) is not its own; and a response the
    serializer refuses fails in grpc's code, which answers the exception's text."""

    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            call = _Call(policy, method, context, unbounded)
        except Refused as exc:
            await _refuse(exc, method, context)
        try:
            if decode is not None:
                request = decode(request)
            task = _current_task()
            assert task is not None  # grpc.aio runs each call in its own task
            with call.block(task):
                produced = behavior(request, context)
                if inspect.isasyncgen(produced):
                    await _write_all(produced, context, call)
                else:  # a coroutine that writes with context.write()
                    await produced
        except _CallOver as over:
            raise over.error from None  # grpc's own error, for a call grpc has ended
        except BaseException as exc:
            await _failed(exc, call, context)
            raise
        finally:
            call.end()

    return guarded


class _CallOver(Exception):
    """A response could not be written because the call is over (its client went away, or
    grpc ended it at its deadline): `error`, grpc's, which grpc handles itself."""

    def __init__(self, error: grpc.aio.InternalError) -> None:
        super().__init__(error)
        self.error = error


async def _write_all(
    responses: AsyncGenerator[Any, Any], context: grpc.aio.ServicerContext[Any, Any], call: _Call
) -> None:
    """Write each response the handler's generator yields, and close the generator here, in
    the call's task and context, however the call ends."""
    try:
        async for response in responses:
            try:
                await context.write(response)
            except grpc.aio.InternalError as exc:  # the transport refused: the call is over
                call.ended_early()
                raise _CallOver(exc) from exc
    finally:
        await responses.aclose()


def _sync_unary(
    behavior: Callable[..., Any],
    policy: Budgets,
    method: str,
    unbounded: bool,
    decode: Decode | None,
    serialize: Serialize,
) -> Callable[..., bytes]:
    """`_unary` for a synchronous handler: grpc runs the returned function in its worker
    thread (grpc.aio's migration pool, or grpc's synchronous server), and the call is set up
    there, in a context of its own."""

    def guarded(request: Any, context: Any) -> bytes:
        try:
            return contextvars.copy_context().run(
                _run_in_thread,
                behavior,
                request,
                _ThreadContext(context),
                policy,
                method,
                unbounded,
                decode,
                serialize,
            )
        except _AbortedInThread:
            return b""  # grpc ends the call with the status the abort sent

    return guarded


def _run_in_thread(
    behavior: Callable[..., Any],
    request: Any,
    context: _ThreadContext,
    policy: Budgets,
    method: str,
    unbounded: bool,
    decode: Decode | None,
    serialize: Serialize,
) -> bytes:
    call = _call_in_thread(policy, method, context, unbounded)
    try:
        if decode is not None:
            request = decode(request)
        with deadline_for_thread(call.when):  # known in the thread, not enforced
            return serialized(behavior(request, context), serialize, context)
    except BaseException as exc:
        _failed_in_thread(exc, call, context)
        raise
    finally:
        call.end()


class _ThreadContext:
    """grpc's context for a synchronous handler, noting the status an abort or `set_code` ends
    the call with, which `code()` tells (grpc.aio's context for threads has no `code()`, and
    its abort raises a plain Exception on grpc's synchronous server). Everything else is
    grpc's."""

    __slots__ = ("_context", "_set", "aborted_with")

    def __init__(self, context: Any) -> None:
        self._context = context
        self.aborted_with: grpc.StatusCode | None = None
        self._set: grpc.StatusCode | None = None

    def abort(self, code: grpc.StatusCode, *args: Any, **kwargs: Any) -> NoReturn:
        self.aborted_with = code
        self._context.abort(code, *args, **kwargs)
        raise _AbortedInThread  # grpc.aio before 1.85: its abort returned (see below)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._set = code
        self._context.set_code(code)

    def code(self) -> grpc.StatusCode | None:
        return self.aborted_with or self._set

    def call_over(self) -> bool:
        """Whether grpc has ended the call (an abort then sends nothing: the client already
        has its status). grpc's synchronous server knows; grpc.aio's context for threads knows
        only whether the client's deadline has passed."""
        is_active = getattr(self._context, "is_active", None)
        if is_active is not None:
            return not is_active()
        remaining = self._context.time_remaining()
        return remaining is not None and remaining <= 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _AbortedInThread(BaseException):
    """Stops a synchronous handler whose `context.abort()` returned. grpc.aio before 1.85 sends
    the abort's status from a worker thread and then returns, so the handler ran on after
    its abort. A BaseException, so that a handler's `except Exception` does not catch it; the
    guard turns it into an empty answer, which grpc discards for the abort's status."""


def _call_in_thread(
    policy: Budgets, method: str, context: _ThreadContext, unbounded: bool
) -> _Call:
    """The call's bookkeeping, set up in the worker thread; bad deadline metadata aborts the
    call with INVALID_ARGUMENT."""
    try:
        return _Call(policy, method, context, unbounded)  # type: ignore[arg-type]
    except Refused as exc:
        _refuse_in_thread(exc, method, context)


def _refuse_in_thread(exc: ValueError, method: str, context: _ThreadContext) -> NoReturn:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(exc, method))


def _failed_in_thread(exc: BaseException, call: _Call, context: _ThreadContext) -> None:
    """`_failed`, in a synchronous handler's thread."""
    if context.aborted_with is not None:  # the handler aborted: what it raised is grpc's
        if context.call_over():  # too late: the call had ended (its deadline, or its client)
            call.ended_early()
        else:
            call.code = context.aborted_with
        return
    code = _note_failure(exc, call)
    if code is not None:
        context.abort(code, _details_for(code))


async def _refuse(
    exc: ValueError, method: str, context: grpc.aio.ServicerContext[Any, Any]
) -> NoReturn:
    """A call whose deadline metadata the codec refuses, or whose request id is malformed
    (`Refused`): INVALID_ARGUMENT naming the metadata and its value (the caller's own input),
    before the handler runs."""
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refusal(exc, method))
    raise AssertionError("context.abort returns only by raising")  # pragma: no cover


def _refusal(exc: ValueError, method: str) -> str:
    """Log a refused call; the details it is aborted with."""
    log.warning("grpc %s refused: %s", method, exc)
    return str(exc)


async def _failed(
    exc: BaseException, call: _Call, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    """Note in `call.code` the status the call ends with when `exc` ends it. The safety net: a
    plain exception is then answered here with a generic abort (which raises AbortError);
    `context.abort(...)` from the handler, cancellations and other BaseExceptions pass on with
    their own status. (The code is noted first: the abort does not return.)"""
    if _ended_by_grpc(exc, call, context):
        return
    code = _note_failure(exc, call)
    if code is not None:
        await context.abort(code, _details_for(code))


# grpc's own ends of a call, raised in a handler: its abort (grpc has sent the abort's status),
# or its InternalError from an operation (`context.abort()`, a read, a write) on a call grpc had
# already ended: its client went away, or its deadline passed. Neither is a failure to answer:
# the call is over, and answering it again only made grpc log "Abort already called!".
_GRPCS_ENDS = (grpc.aio.AbortError, grpc.aio.InternalError)


def _ended_by_grpc(exc: BaseException, call: _Call, context: Any) -> bool:
    """Whether `exc` is grpc's own end of the call (`_GRPCS_ENDS`), whose status it notes
    (the abort's, or how grpc ended the call); grpc handles its own exception when the guard
    re-raises it. A handler that fans out meets it in one of its tasks, inside an exception
    group: grpc's exception is then raised here in place of the group, as from the handler
    itself, and the group's other exceptions, if any, are logged (failures nobody was told of).
    False: `exc` holds no such end."""
    leaves = leaves_of(exc)
    ends = [leaf for leaf in leaves if isinstance(leaf, _GRPCS_ENDS)]
    if not ends:
        return False
    if isinstance(ends[0], grpc.aio.AbortError):
        call.code = _code_of(context)
    else:
        call.ended_early()
    if ends[0] is exc:
        return True
    others = [leaf for leaf in leaves if not isinstance(leaf, _GRPCS_ENDS)]
    if others:
        log_fields(
            log,
            logging.ERROR,
            "grpc %s request_id=%s ended (%s) in a task of its fan-out; its other tasks "
            "failed with %s",
            call.method,
            call.request_id,
            call.code.name,
            ", ".join(type(leaf).__name__ for leaf in others),
            exc_info=exc,
            fields={"request_id": call.request_id},
        )
    raise ends[0] from None


def _note_failure(exc: BaseException, call: _Call) -> grpc.StatusCode | None:
    """`_failed` for anything but an abort: notes the status in `call.code`, and returns it
    when the call must be aborted with it (a plain exception, for the safety net)."""
    if isinstance(exc, asyncio.CancelledError):
        failure = stray_cancellation(exc)
        if failure is None:  # grpc's deadline, or the client cancelled
            call.ended_early()
            return None
        exc = failure  # a bug, not a cancellation: the call is still on, and gets INTERNAL
    if not isinstance(exc, Exception):
        call.code = grpc.StatusCode.UNKNOWN
        return None
    code = call.code = _status_for(exc, call)
    return code


def _status_for(exc: Exception, call: _Call) -> grpc.StatusCode:
    failure = reported_failure(exc, _answered_precisely)  # a fan-out's: as the call made alone
    if isinstance(failure, UndecodableRequest):  # the caller's malformed input, not a failure
        log.warning("grpc %s request_id=%s refused: %s", call.method, call.request_id, failure)
        return grpc.StatusCode.INVALID_ARGUMENT
    code = _outcome_status(failure)
    if code is not None:
        # Worth a line of its own: a timeout that is not tether's budget, or a group's errors.
        foreign = isinstance(failure, TimeoutError) and not isinstance(failure, DeadlineExceeded)
        if failure is not exc or foreign:
            summary = f"{type(failure).__name__}: {failure_summary(failure, exc)}"
            log.warning("grpc %s request_id=%s: %s", call.method, call.request_id, summary)
        return code
    log_fields(
        log,
        logging.ERROR,
        "grpc %s request_id=%s failed; answered INTERNAL",
        call.method,
        call.request_id,
        exc_info=exc,
        fields={"request_id": call.request_id},
    )
    return grpc.StatusCode.INTERNAL


# Statuses from a downstream call that a service may pass on as its own.
_PASSED_ON = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE})


def _outcome_status(exc: BaseException) -> grpc.StatusCode | None:
    """The status of its own that `exc` is answered with, when it is an outcome (a timeout, a
    dependency down) rather than a bug (None: `INTERNAL`)."""
    if isinstance(exc, TimeoutError):  # includes DeadlineExceeded
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, UpstreamUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    # A downstream call's failure (grpc.aio's, or the synchronous API's, which is a grpc.Call)
    if isinstance(exc, grpc.aio.AioRpcError | grpc.Call) and exc.code() in _PASSED_ON:
        return exc.code()
    return None


def _answered_precisely(exc: BaseException) -> bool:
    return _outcome_status(exc) is not None


def _details_for(code: grpc.StatusCode) -> str:
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "deadline exceeded"
    if code is grpc.StatusCode.UNAVAILABLE:
        return "a dependency is unavailable"
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return _UNDECODABLE
    return _GENERIC


_UNDECODABLE = "a request message could not be decoded"


def _code_of(
    context: Any, *, default: grpc.StatusCode = grpc.StatusCode.UNKNOWN
) -> grpc.StatusCode:
    """The status the handler set on `context` (`abort`, `set_code`), or `default`."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else default


def server(
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    default_budget: float = 10.0,
    max_budget: float = 60.0,
    unbounded_methods: Iterable[str] = (),
    **kwargs: Any,
) -> grpc.aio.Server:
    """A grpc.aio server with tether's interceptor first, then yours (it guards them too).
    Synchronous handlers, streaming ones too, run in `migration_thread_pool` when given."""
    tether = TetherServerInterceptor(
        default_budget=default_budget,
        max_budget=max_budget,
        unbounded_methods=unbounded_methods,
        thread_pool=kwargs.get("migration_thread_pool"),
    )
    return grpc.aio.server(interceptors=[tether, *interceptors], **kwargs)
