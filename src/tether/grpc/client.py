"""The budget on outgoing grpc.aio calls: client interceptors for all four call shapes.

grpc.aio does not carry a deadline into outgoing calls by itself: a service that calls another
sends no deadline at all unless it sets `timeout=` on every call. These interceptors do it:

- every call's timeout is `min(explicit timeout, ambient remaining - margin)`;
- `x-request-id` and `traceparent` go along in the metadata;
- no call is started when the budget is gone: `DeadlineExceeded` is raised instead.

Errors are mapped at this edge for unary-unary calls: a `DEADLINE_EXCEEDED` caused by the
ambient budget becomes `DeadlineExceeded`; one caused by an explicit, shorter `timeout=` becomes
`UpstreamTimeout`; `UNAVAILABLE` becomes `UpstreamUnavailable`. The original
`grpc.aio.AioRpcError` is the `__cause__`. Other statuses, and all statuses of the streaming
shapes (grpc.aio lets only unary-unary interceptors answer in place of the call), stay
`AioRpcError`.

`insecure_channel()` / `secure_channel()` build channels with the interceptors in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from tether._settings import margin_seconds
from tether.errors import DeadlineExceeded, UpstreamTimeout, UpstreamUnavailable, format_seconds
from tether.request_id import REQUEST_ID_HEADER, current_request_id
from tether.tracing import outgoing_trace_headers
from tether.wire import DEFAULT_MARGIN, call_timeout

__all__ = ["TetherClientInterceptor", "insecure_channel", "secure_channel"]


class _Budgeted:
    """What every shape shares: rewrite the call details to carry the budget and ids."""

    def __init__(self, *, margin: float = DEFAULT_MARGIN) -> None:
        self.margin = margin_seconds(margin)

    def budgeted(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        """The details with the budget as timeout and tether's metadata added."""
        timeout = call_timeout(details.timeout, margin=self.margin)  # raises when none is left
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        request_id = current_request_id()
        if request_id is not None and not metadata.get_all(REQUEST_ID_HEADER):
            metadata.add(REQUEST_ID_HEADER, request_id)
        for name, value in outgoing_trace_headers():
            if not metadata.get_all(name):
                metadata.add(name, value)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def answer(self, continuation: Any, details: Any, request: Any) -> Any:
        """Run a unary-unary call, mapping its failure to tether's errors."""
        budgeted = self.budgeted(details)
        call = await continuation(budgeted, request)
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise _mapped(exc, details.method, budgeted.timeout, details.timeout) from exc


def _mapped(
    exc: grpc.aio.AioRpcError, method: str, sent: float | None, explicit: float | None
) -> Exception:
    code = exc.code()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        if sent is not None and (explicit is None or sent < explicit):
            return DeadlineExceeded(
                f"deadline exceeded: {method} did not answer within the "
                f"{format_seconds(sent)} left of the budget"
            )
        return UpstreamTimeout(f"{method} reported DEADLINE_EXCEEDED: {exc.details()}")
    if code is grpc.StatusCode.UNAVAILABLE:
        return UpstreamUnavailable(f"{method} is unavailable: {exc.details()}")
    return exc


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
) -> grpc.aio.Channel:
    """A plaintext channel whose calls pass the budget on; your interceptors run after."""
    return grpc.aio.insecure_channel(
        target, interceptors=[*TetherClientInterceptor(margin=margin), *interceptors], **kwargs
    )


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    *,
    margin: float = DEFAULT_MARGIN,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    **kwargs: Any,
) -> grpc.aio.Channel:
    """A TLS channel whose calls pass the budget on; your interceptors run after."""
    return grpc.aio.secure_channel(
        target,
        credentials,
        interceptors=[*TetherClientInterceptor(margin=margin), *interceptors],
        **kwargs,
    )
