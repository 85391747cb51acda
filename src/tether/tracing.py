"""W3C trace context passed through a service: the incoming `traceparent`, sent on outgoing calls.

When OpenTelemetry is installed and a span is recording, its propagator writes the outgoing
headers instead (so the service's own spans join the trace). Otherwise tether passes the
caller's `traceparent` on unchanged, which keeps the trace connected across hops that do no
tracing of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

TRACEPARENT_HEADER = "traceparent"

# version 00: 2 hex, trace-id 32 hex (not all zero), parent-id 16 hex (not all zero), flags.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")

_current: ContextVar[str | None] = ContextVar("tether.traceparent", default=None)


def valid_traceparent(value: str) -> bool:
    """True when `value` is a version-00 W3C traceparent."""
    return _TRACEPARENT.fullmatch(value) is not None


def set_incoming_traceparent(value: str | None) -> Token[str | None] | None:
    """Like `incoming_traceparent` for hot paths: returns a token for `reset_…`, or None when
    there was nothing to set."""
    if value is None or not valid_traceparent(value):
        return None if _current.get() is None else _current.set(None)
    return _current.set(value)


def reset_incoming_traceparent(token: Token[str | None] | None) -> None:
    if token is not None:
        _current.reset(token)


@contextmanager
def incoming_traceparent(value: str | None) -> Iterator[None]:
    """Pass the caller's traceparent on from calls made in the block (ignored when malformed)."""
    token = set_incoming_traceparent(value)
    try:
        yield
    finally:
        reset_incoming_traceparent(token)


def outgoing_trace_headers() -> list[tuple[str, str]]:
    """The trace headers for an outgoing call: OpenTelemetry's if active, else pass-through."""
    otel = _opentelemetry
    if otel is _NOT_LOOKED_UP:
        otel = _find_opentelemetry()
    if otel is not None:
        injected = _opentelemetry_headers(otel)
        if injected:
            return injected
    incoming = _current.get()
    return [] if incoming is None else [(TRACEPARENT_HEADER, incoming)]


def _opentelemetry_headers(otel: Any) -> list[tuple[str, str]]:
    propagate, trace, context = otel
    if not context.get_current():  # an empty OpenTelemetry context holds no span: the usual
        return []  # case in a service that has OpenTelemetry installed but not tracing
    if not trace.get_current_span().get_span_context().is_valid:
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def _find_opentelemetry() -> Any:
    """OpenTelemetry's `propagate`, `trace` and `context` modules, or None when it is not
    installed.

    Looked up at the first outgoing call, then remembered: a failed import is not cached by
    Python, and trying it on every call searched the whole import path each time."""
    global _opentelemetry
    try:
        from opentelemetry import context, propagate, trace
    except ImportError:
        _opentelemetry = None
    else:
        _opentelemetry = (propagate, trace, context)
    return _opentelemetry


_NOT_LOOKED_UP: Any = object()
_opentelemetry: Any = _NOT_LOOKED_UP
