"""The budget inside services on grpc's synchronous server (`grpc.server(ThreadPoolExecutor())`).

The same interceptor rules as grpc.aio's (see `tether.grpc.server`), run in grpc's worker
threads, for all four call shapes:

1. Safety net: an exception from the handler, or from an interceptor after this one, becomes
   `INTERNAL` with a generic message. grpc's synchronous server alone answers `UNKNOWN` with
   the exception's text (`Exception calling application: <text>`): that text reaches every
   caller. `TimeoutError` / `DeadlineExceeded` become `DEADLINE_EXCEEDED`,
   `UpstreamUnavailable` becomes `UNAVAILABLE`; `context.abort(...)` passes through.
2. Request id from `x-request-id` metadata (or a new one); `traceparent` passed on.
3. Deadline: the client's (`context.time_remaining()`), clamped to `max_budget`, or
   `default_budget` when it sent none; tether's deadline metadata as on grpc.aio, invalid
   values answered `INVALID_ARGUMENT`. It is ambient in the handler's thread
   (`time_remaining()`, `check_deadline()`, tether's synchronous clients), but nothing cancels
   a thread: at the client's deadline grpc ends the call for the client, and the handler runs
   on until it returns or its budget-bound work stops it.
4. One log line per call on `tether.grpc`.

Each call runs in a context of its own (request id, trace context, deadline), entered for each
step of a streaming handler: a response generator that grpc drops when its call ends is closed
in that context, and the line is logged with the status the call ended with.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, cast

import grpc

from tether._settings import server_budgets
from tether.grpc._sync_streams import responses_under_deadline
from tether.grpc.server import (
    _GENERIC,
    Decode,
    Serialize,
    WrappedHandlers,
    _Call,
    _call_in_thread,
    _failed_in_thread,
    _sync_unary,
    _ThreadContext,
    check_thread_pool,
    decoding,
    serializing,
    shape_of,
    streams_requests,
    unbounded_methods_of,
    wrapped_once,
)

__all__ = ["TetherSyncServerInterceptor", "sync_server"]

log = logging.getLogger("tether.grpc")


class TetherSyncServerInterceptor(grpc.ServerInterceptor):
    """Safety net, request id, deadline and a log line for every call of a synchronous grpc
    server; put it first (`sync_server()` does)."""

    def __init__(
        self,
        *,
        default_budget: float = 10.0,
        max_budget: float = 60.0,
        unbounded_methods: Iterable[str] = (),
    ) -> None:
        self.default_budget, self.max_budget = server_budgets(default_budget, max_budget)
        self.unbounded_methods = unbounded_methods_of(unbounded_methods)
        self._wrapped: WrappedHandlers = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        try:
            handler = continuation(handler_call_details)
        except Exception:  # an interceptor after this one failed (the seed's JWT panic)
            log.exception("grpc %s: an interceptor raised; answered INTERNAL", method)
            return grpc.stream_stream_rpc_method_handler(_abort_internal)
        if handler is None:
            return None
        return wrapped_once(self._wrapped, method, handler, _wrap, self)


def _abort_internal(request_iterator: Any, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.INTERNAL, _GENERIC)


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], policy: TetherSyncServerInterceptor, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    behavior, make, streams_responses = shape_of(handler)
    guard = _streaming if streams_responses else _sync_unary
    # Requests are decoded and responses serialized inside the safety net (see `decoding` and
    # `serializing`): a single request by the guard, a stream's as the handler reads them.
    decode = decoding(handler.request_deserializer)
    if decode is not None and streams_requests(handler):
        behavior = _reading_decoded(behavior, decode)
        decode = None
    serialize = serializing(handler.response_serializer)
    unbounded = method in policy.unbounded_methods
    guarded = guard(behavior, policy, method, unbounded, decode, serialize)
    return make(guarded, None, None)


def _reading_decoded(behavior: Callable[..., Any], decode: Decode) -> Callable[..., Any]:
    """`behavior`, handed its stream of requests decoded one by one as it reads them."""

    def reading(requests: Iterator[bytes], context: Any) -> Any:
        return behavior(map(decode, requests), context)

    return reading


def _streaming(
    behavior: Callable[..., Iterator[Any]],
    policy: TetherSyncServerInterceptor,
    method: str,
    unbounded: bool,
    decode: Decode | None,
    serialize: Serialize,
) -> Callable[..., Iterator[bytes]]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        call_context = contextvars.copy_context()
        thread_context = _ThreadContext(context)
        call = call_context.run(_call_in_thread, policy, method, thread_context, unbounded)
        return _stepped(call_context, call, behavior, request, thread_context, decode, serialize)

    return guarded


def _stepped(
    call_context: contextvars.Context,
    call: _Call,
    behavior: Callable[..., Iterator[Any]],
    request: Any,
    context: _ThreadContext,
    decode: Decode | None,
    serialize: Serialize,
) -> Iterator[bytes]:
    """The handler's responses, each made and serialized inside the call's context and
    deadline. However the call ends (grpc drops this generator when the call ends first, or a
    response fails), the handler's generator is closed in that context too; a call ended early
    is noted as expired or cancelled."""
    run = call_context.run
    responses: Generator[Any, None, None] | None = None
    try:
        if decode is not None:
            request = run(decode, request)
        responses = responses_under_deadline(behavior, request, context, call.when)
        while True:
            try:
                response = run(next, responses)
            except StopIteration:
                return
            yield run(serialize, response)
    except GeneratorExit:
        call.ended_early()
        raise
    except BaseException as exc:
        run(_failed_in_thread, exc, call, context)
        raise
    finally:
        if responses is not None:
            run(responses.close)
        run(call.end)


def sync_server(
    thread_pool: Executor,
    *,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    default_budget: float = 10.0,
    max_budget: float = 60.0,
    unbounded_methods: Iterable[str] = (),
    **kwargs: Any,
) -> grpc.Server:
    """`grpc.server(thread_pool, ...)` with tether's interceptor first, then yours (it guards
    them too). `kwargs` go to `grpc.server` (`options`, `maximum_concurrent_rpcs`, ...)."""
    check_thread_pool(thread_pool)
    tether = TetherSyncServerInterceptor(
        default_budget=default_budget,
        max_budget=max_budget,
        unbounded_methods=unbounded_methods,
    )
    # grpc's type stub asks for a ThreadPoolExecutor; grpc itself only calls submit().
    pool = cast(ThreadPoolExecutor, thread_pool)
    return grpc.server(pool, interceptors=[tether, *interceptors], **kwargs)
