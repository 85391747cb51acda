"""The budget on outgoing grpc.aio calls: client interceptors for all four call shapes.

grpc.aio does not carry a deadline into outgoing calls by itself: a service that calls another
sends no deadline at all unless it sets `timeout=` on every call. These interceptors do it:

- every call's timeout is `min(explicit timeout, ambient remaining - margin)`, the budget part
  lowered so that what grpc puts on the wire is not more (see `timeout_for_grpc`);
- `x-request-id` and `traceparent` go along in the metadata;
- no call is started when the budget is gone: `DeadlineExceeded` is raised instead.

Errors are mapped at this edge, for every call shape through tether's `Channel` (a stream's
as it is read, written or awaited) and for unary-unary calls through the interceptors: a
`DEADLINE_EXCEEDED` caused by the ambient budget becomes `DeadlineExceeded`; one caused by an
explicit, shorter `timeout=` becomes `UpstreamTimeout`, and so does one the callee answered
before the call's deadline (its own limit ran out, not this call's: as an HTTP upstream's
504); `UNAVAILABLE` becomes `UpstreamUnavailable`. The original
`grpc.aio.AioRpcError` is the `__cause__`. Other statuses stay `AioRpcError`, and so do all
statuses of the streaming shapes through the interceptors (grpc.aio lets only unary-unary
interceptors answer in place of the call).

`insecure_channel()` / `secure_channel()` return a `Channel`: a grpc.aio channel whose
callables do all of this directly, without grpc.aio's client-interceptor machinery (which adds
a task to every call). `TetherClientInterceptor()` gives the same behaviour as interceptors, for
channels you build yourself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator, Sequence
from typing import Any, NoReturn

import grpc
import grpc.aio

from tether._settings import margin_seconds, positive_seconds
from tether.errors import DeadlineExceeded, UpstreamTimeout, UpstreamUnavailable, format_seconds
from tether.request_id import REQUEST_ID_HEADER, current_request_id
from tether.tracing import outgoing_trace_headers
from tether.wire import DEFAULT_MARGIN, call_timeout

__all__ = [
    "Channel",
    "TetherClientInterceptor",
    "insecure_channel",
    "secure_channel",
    "timeout_for_grpc",
]


class _Budgeted:
    """What every shape shares: rewrite the call details to carry the budget and ids."""

    def __init__(self, *, margin: float = DEFAULT_MARGIN) -> None:
        self.margin = margin_seconds(margin)

    def budgeted(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        """The details with the budget as timeout and tether's metadata added."""
        timeout, metadata = self.timeout_and_metadata(details.timeout, details.metadata)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    def timeout_and_metadata(
        self, timeout: float | None, metadata: Any
    ) -> tuple[float | None, Any]:
        """A call's timeout `min(explicit, remaining - margin)` (raises when nothing is left)
        and its metadata with the request id and trace context added."""
        timeout, merged = pass_budget_on(timeout, metadata, self.margin)
        return timeout, metadata if merged is None else grpc.aio.Metadata(*merged)

    async def answer(self, continuation: Any, details: Any, request: Any) -> Any:
        """Run a unary-unary call, mapping its failure to tether's errors."""
        budgeted = self.budgeted(details)
        call = await continuation(budgeted, request)
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise_mapped(
                exc, details.method, budgeted.timeout, details.timeout, call.time_remaining()
            )


def pass_budget_on(
    timeout: float | None, metadata: Any, margin: float
) -> tuple[float | None, tuple[tuple[str, str | bytes], ...] | None]:
    """What a call sends, for both grpc.aio and grpc's synchronous channels: its timeout,
    `min(explicit, remaining - margin)` made safe from grpc's rounding (raises
    `DeadlineExceeded` when nothing is left), and its metadata with `x-request-id` and
    `traceparent` added where the caller set none (None: nothing to add, send it as given).
    An explicit `timeout` that is not a positive finite number of seconds is the caller's
    mistake: `ValueError`, and nothing is sent (grpc would fail such a call as if the callee
    had timed out, or send it with a deadline already due)."""
    if timeout is not None:
        timeout = positive_seconds("timeout", timeout)
    left = call_timeout(margin=margin)
    if left is not None:
        left = timeout_for_grpc(left)
        if timeout is None or timeout > left:
            timeout = left
    added = []
    request_id = current_request_id()
    if request_id is not None:
        added.append((REQUEST_ID_HEADER, request_id))
    added.extend(outgoing_trace_headers())
    if not added:
        return timeout, None
    existing = tuple(metadata or ())
    names = {name for name, _ in existing}
    return timeout, (*existing, *(pair for pair in added if pair[0] not in names))


def timeout_for_grpc(seconds: float) -> float:
    """The timeout to give grpc for a budget of `seconds`, so that the callee's deadline (the
    `grpc-timeout` grpc sends) is not later than the caller's.

    gRPC C-core does not send the timeout it is given. It rounds the time left up to whole
    milliseconds, then to three significant figures (from 1 s in steps of 10 ms, from 10 s
    in steps of 100 ms, ...: 12.345 s goes out as 12.4 s), and its header compression may
    send instead an earlier timeout of the same connection that is up to 3% longer (measured:
    a 3.49 s budget arrived as 3.58 s). Rule: hand grpc 97% of the budget, and from 998 ms
    on round that down to its step, less 2 ms, so that grpc's rounding up lands on the step.
    Below 998 ms grpc's rounding adds under 2 ms, which the margin absorbs. Cost: about 3%
    of each hop's budget (plus at most one step, 1%).
    """
    millis = seconds * 970.0
    if millis < 998.0:
        return millis / 1000.0
    if millis >= 100_000_000.0:  # 27 hours and more: grpc counts whole hours
        return float(int(millis // 3_600_000.0) * 3600) - 0.002
    step = 1.0  # three significant figures of the milliseconds
    while millis >= 1000.0 * step:
        step *= 10.0
    return ((millis // step) * step - 2.0) / 1000.0


# How much of a call's time may be left when its DEADLINE_EXCEEDED still counts as the call's own
# deadline passing: grpc's client timer rings a little late, never early.
_CALLS_OWN_DEADLINE = 0.002


def raise_mapped(
    exc: grpc.RpcError,
    method: str,
    sent: float | None,
    explicit: float | None,
    left: float | None,
) -> NoReturn:
    """Raise the failure of a call that ends with an answer (unary response) as tether's error:
    DEADLINE_EXCEEDED is `DeadlineExceeded` when the call's deadline passed and the budget set
    the timeout grpc was given (`sent`), `UpstreamTimeout` when the caller's own, shorter
    `explicit` timeout did, or when the callee answered it while the call had time `left` (its
    own limit, a shorter one, ran out; None: no deadline); UNAVAILABLE is `UpstreamUnavailable`.
    Other statuses: `exc` itself."""
    code = exc.code()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        if left is not None and left > _CALLS_OWN_DEADLINE:
            raise UpstreamTimeout(
                f"{method} reported DEADLINE_EXCEEDED with {format_seconds(left)} of the "
                f"call's time left: {exc.details()}"
            ) from exc
        if sent is not None and (explicit is None or sent < explicit):
            raise DeadlineExceeded(
                f"deadline exceeded: {method} did not answer within the "
                f"{format_seconds(sent)} left of the budget"
            ) from exc
        raise UpstreamTimeout(f"{method} reported DEADLINE_EXCEEDED: {exc.details()}") from exc
    if code is grpc.StatusCode.UNAVAILABLE:
        raise UpstreamUnavailable(f"{method} is unavailable: {exc.details()}") from exc
    raise exc


class _UnaryUnary(_Budgeted, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self.answer(continuation, details, request)


class _UnaryStream(_Budgeted, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.budgeted(details), request)


class _StreamUnary(_Budgeted, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self.budgeted(details), request_iterator)


class _StreamStream(_Budgeted, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self.budgeted(details), request_iterator)


class Channel:
    """A grpc.aio channel whose calls carry the ambient budget, request id and trace context.

    It has the grpc.aio channel's methods (`unary_unary`, `close`, `channel_ready`, ...); the
    four callable factories return callables that pass the budget on.
    """

    def __init__(self, channel: grpc.aio.Channel, *, margin: float = DEFAULT_MARGIN) -> None:
        self._channel = channel
        self._budget = _Budgeted(margin=margin)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _UnaryUnaryCallable:
        return _UnaryUnaryCallable(
            self._channel.unary_unary(method, *args, **kwargs), method, self._budget
        )

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _Callable:
        return _Callable(self._channel.unary_stream(method, *args, **kwargs), method, self._budget)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _Callable:
        return _Callable(self._channel.stream_unary(method, *args, **kwargs), method, self._budget)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _Callable:
        inner = self._channel.stream_stream(method, *args, **kwargs)
        return _Callable(inner, method, self._budget)

    async def __aenter__(self) -> Channel:
        await self._channel.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._channel.__aexit__(*exc_info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


class _Callable:
    """A grpc.aio multi-callable of a streaming shape whose calls get the budget as timeout and
    tether's metadata, and map their failures (`_MappedStream`)."""

    __slots__ = ("_budget", "_inner", "_method")

    def __init__(self, inner: Any, method: str, budget: _Budgeted) -> None:
        self._inner = inner
        self._method = method
        self._budget = budget

    def __call__(
        self, request: Any, *, timeout: float | None = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        sent, metadata = self._budget.timeout_and_metadata(timeout, metadata)
        call = self._inner(request, timeout=sent, metadata=metadata, **kwargs)
        return _MappedStream(call, self._method, sent, timeout)


class _UnaryUnaryCallable(_Callable):
    __slots__ = ()

    def __call__(
        self, request: Any, *, timeout: float | None = None, metadata: Any = None, **kwargs: Any
    ) -> _MappedCall:
        sent, metadata = self._budget.timeout_and_metadata(timeout, metadata)
        call = self._inner(request, timeout=sent, metadata=metadata, **kwargs)
        return _MappedCall(call, self._method, sent, timeout)


class _MappedCall:
    """A unary-unary call whose failure, when awaited, is mapped to tether's errors."""

    __slots__ = ("_call", "_explicit", "_method", "_sent")

    def __init__(self, call: Any, method: str, sent: float | None, explicit: float | None) -> None:
        self._call = call
        self._method = method
        self._sent = sent
        self._explicit = explicit

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._call.__await__())
        except grpc.aio.AioRpcError as exc:
            self._raise_mapped(exc)

    def _raise_mapped(self, exc: grpc.aio.AioRpcError) -> NoReturn:
        raise_mapped(exc, self._method, self._sent, self._explicit, self._call.time_remaining())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _MappedStream(_MappedCall):
    """A call of a streaming shape whose failures are mapped as a unary call's: when its
    responses are read (`async for`, `read()`), its requests written (`write()`,
    `done_writing()`) or its one response awaited (stream-unary)."""

    __slots__ = ("_responses",)

    def __aiter__(self) -> _MappedStream:
        self._responses = self._call.__aiter__()
        return self

    # Plain functions handing back `_mapped`'s coroutine: one coroutine per step, not two.

    def __anext__(self) -> Coroutine[Any, Any, Any]:
        return self._mapped(self._responses.__anext__())

    def read(self) -> Coroutine[Any, Any, Any]:
        return self._mapped(self._call.read())

    def write(self, request: Any) -> Coroutine[Any, Any, Any]:
        return self._mapped(self._call.write(request))

    def done_writing(self) -> Coroutine[Any, Any, Any]:
        return self._mapped(self._call.done_writing())

    async def _mapped(self, step: Awaitable[Any]) -> Any:
        """What `step` (one of grpc's operations on the call) gives, its failure mapped."""
        try:
            return await step
        except grpc.aio.AioRpcError as exc:
            self._raise_mapped(exc)


def TetherClientInterceptor(  # noqa: N802 - reads as the interceptor it builds
    *, margin: float = DEFAULT_MARGIN
) -> list[grpc.aio.ClientInterceptor]:
    """The four client interceptors (one per call shape) that pass the budget on."""
    return [cls(margin=margin) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def insecure_channel(
    target: str,
    *,
    margin: float = DEFAULT_MARGIN,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    **kwargs: Any,
) -> Channel:
    """A plaintext channel whose calls pass the budget on (before your interceptors run)."""
    channel = grpc.aio.insecure_channel(target, interceptors=interceptors or None, **kwargs)
    return Channel(channel, margin=margin)


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    *,
    margin: float = DEFAULT_MARGIN,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    **kwargs: Any,
) -> Channel:
    """A TLS channel whose calls pass the budget on (before your interceptors run)."""
    channel = grpc.aio.secure_channel(
        target, credentials, interceptors=interceptors or None, **kwargs
    )
    return Channel(channel, margin=margin)
