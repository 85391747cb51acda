"""The budget on outgoing calls made with grpc's synchronous API, from code running in a thread.

A `def` handler (grpc.aio's worker threads, a FastAPI `def` endpoint) that calls another
service through `grpc.insecure_channel()` sends no deadline unless it sets `timeout=` on every
call, and it blocks for as long as that service takes. `SyncChannel` wraps any synchronous
`grpc.Channel` so that, exactly as tether's grpc.aio `Channel`:

- every call's timeout is `min(explicit timeout, ambient remaining - margin)` (lowered so that
  grpc's rounding does not send more; see `timeout_for_grpc`);
- `x-request-id` and `traceparent` go along in the metadata, unless the caller set them;
- no call is started when the budget is gone: `DeadlineExceeded` is raised instead;
- calls that fail raise tether's errors: `DeadlineExceeded` when the budget ran out,
  `UpstreamTimeout` when an explicit, shorter timeout did (or the callee answered
  `DEADLINE_EXCEEDED` with time left), `UpstreamUnavailable` for `UNAVAILABLE`; grpc's
  `RpcError` is the `__cause__`. That holds for the blocking forms (`stub.Method(request)`,
  `.with_call()`) of the unary-response shapes and for the responses of the streaming ones as
  they are iterated. Other statuses and `.future()` calls raise grpc's own `RpcError`.

Nothing can cancel a thread, so the timeout is what ends a blocking call at the deadline: the
callee sees the same deadline and is cancelled by grpc when it passes.

The ambient budget is the thread's: the one tether's gRPC server gives a `def` handler, the one
a `def` endpoint inherits from its request (Starlette copies the request's context into the
thread), or the one of any task whose context the thread runs in (`asyncio.to_thread()`,
`loop.run_in_executor()` with `contextvars.copy_context().run`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import grpc

from tether._settings import margin_seconds
from tether.grpc.client import pass_budget_on, raise_mapped
from tether.wire import DEFAULT_MARGIN

__all__ = ["SyncChannel", "sync_insecure_channel", "sync_secure_channel"]


class SyncChannel:
    """A synchronous `grpc.Channel` whose calls carry the ambient budget, request id and trace
    context. Generated stubs take it as they take grpc's channel (`EchoStub(channel)`); its
    other methods (`subscribe`, `close`, ...) are the wrapped channel's.
    """

    def __init__(self, channel: grpc.Channel, *, margin: float = DEFAULT_MARGIN) -> None:
        if not isinstance(channel, grpc.Channel):
            raise TypeError(
                f"SyncChannel wraps a synchronous grpc.Channel (grpc.insecure_channel(), "
                f"grpc.intercept_channel(), ...), got {channel!r}; for grpc.aio use "
                "tether.grpc.Channel"
            )
        self._channel = channel
        self._margin = margin_seconds(margin)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _Callable:
        inner = self._channel.unary_unary(method, *args, **kwargs)
        return _Callable(inner, self._margin, method)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _Callable:
        inner = self._channel.unary_stream(method, *args, **kwargs)
        return _Callable(inner, self._margin, method, streams_responses=True)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _Callable:
        return _Callable(self._channel.stream_unary(method, *args, **kwargs), self._margin, method)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _Callable:
        inner = self._channel.stream_stream(method, *args, **kwargs)
        return _Callable(inner, self._margin, method, streams_responses=True)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SyncChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._channel.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


class _Callable:
    """A synchronous multi-callable whose calls, in each of grpc's forms (plain, `with_call`,
    `future`), get the budget as timeout and tether's metadata. A form the call shape lacks
    (`with_call` on a stream) raises AttributeError as grpc's own does."""

    __slots__ = ("_inner", "_margin", "_method", "_streams_responses")

    def __init__(
        self, inner: Any, margin: float, method: str, *, streams_responses: bool = False
    ) -> None:
        self._inner = inner
        self._margin = margin
        self._method = method
        self._streams_responses = streams_responses

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        if self._streams_responses:
            sent, metadata, started = self._budgeted(timeout, metadata)
            responses = self._inner(request, timeout=sent, metadata=metadata, **kwargs)
            return _MappedResponses(responses, self._method, sent, timeout, started)
        return self._send(self._inner, self._method, request, timeout, metadata, kwargs)

    def with_call(
        self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        return self._send(self._inner.with_call, self._method, request, timeout, metadata, kwargs)

    def future(
        self, request: Any, timeout: float | None = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        return self._send(self._inner.future, None, request, timeout, metadata, kwargs)

    def _send(
        self,
        form: Callable[..., Any],
        mapped_as: str | None,
        request: Any,
        timeout: float | None,
        metadata: Any,
        kwargs: dict[str, Any],
    ) -> Any:
        sent, metadata, started = self._budgeted(timeout, metadata)
        try:
            return form(request, timeout=sent, metadata=metadata, **kwargs)
        except grpc.RpcError as exc:
            if mapped_as is None:
                raise
            raise_mapped(exc, mapped_as, sent, timeout, _left(sent, started))

    def _budgeted(self, timeout: float | None, metadata: Any) -> tuple[float | None, Any, float]:
        """A call's timeout and metadata with the budget and tether's entries, and the instant
        it starts (for what is left of it when it fails)."""
        sent, merged = pass_budget_on(timeout, metadata, self._margin)
        return sent, metadata if merged is None else merged, time.monotonic()


def _left(sent: float | None, started: float) -> float | None:
    """What was left of a call's time (grpc's synchronous errors do not say)."""
    return None if sent is None else sent - (time.monotonic() - started)


class _MappedResponses:
    """The responses of a synchronous streaming call, whose failure, as they are iterated,
    is mapped as a blocking call's. Everything else is grpc's call (`cancel()`, `code()`)."""

    __slots__ = ("_explicit", "_method", "_responses", "_sent", "_started")

    def __init__(
        self,
        responses: Any,
        method: str,
        sent: float | None,
        explicit: float | None,
        started: float,
    ) -> None:
        self._responses = responses
        self._method = method
        self._sent = sent
        self._explicit = explicit
        self._started = started

    def __iter__(self) -> _MappedResponses:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._responses)
        except grpc.RpcError as exc:
            left = _left(self._sent, self._started)
            raise_mapped(exc, self._method, self._sent, self._explicit, left)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._responses, name)


def sync_insecure_channel(
    target: str, *, margin: float = DEFAULT_MARGIN, **kwargs: Any
) -> SyncChannel:
    """A plaintext synchronous channel whose calls pass the budget on (`kwargs` go to
    `grpc.insecure_channel`: `options`, `compression`)."""
    margin = margin_seconds(margin)  # before a channel exists that a bad value would leak
    return SyncChannel(grpc.insecure_channel(target, **kwargs), margin=margin)


def sync_secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    *,
    margin: float = DEFAULT_MARGIN,
    **kwargs: Any,
) -> SyncChannel:
    """A TLS synchronous channel whose calls pass the budget on (`kwargs` go to
    `grpc.secure_channel`)."""
    margin = margin_seconds(margin)
    return SyncChannel(grpc.secure_channel(target, credentials, **kwargs), margin=margin)
