"""Trace context on outgoing calls: OpenTelemetry's when a span is active, else pass-through."""

from __future__ import annotations

import pytest

from tether.tracing import incoming_traceparent, outgoing_trace_headers, valid_traceparent

INCOMING = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

trace = pytest.importorskip("opentelemetry.trace")


def active_span() -> object:
    """A span of OpenTelemetry's API (no SDK needed) with a known trace and span id."""
    context = trace.SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.NonRecordingSpan(context)


def test_nothing_to_send_without_a_span_or_an_incoming_traceparent() -> None:
    assert outgoing_trace_headers() == []


def test_the_incoming_traceparent_is_passed_on_when_no_span_is_active() -> None:
    with incoming_traceparent(INCOMING):
        assert outgoing_trace_headers() == [("traceparent", INCOMING)]
    assert outgoing_trace_headers() == []


def test_an_active_opentelemetry_span_writes_the_headers() -> None:
    """The service's own span wins over the caller's traceparent, so its spans join the trace."""
    with incoming_traceparent(INCOMING), trace.use_span(active_span()):
        headers = dict(outgoing_trace_headers())
    assert headers["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_an_invalid_span_falls_back_to_the_incoming_traceparent() -> None:
    with incoming_traceparent(INCOMING), trace.use_span(trace.INVALID_SPAN):
        assert outgoing_trace_headers() == [("traceparent", INCOMING)]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "00-zz",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # unknown version
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent id
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        INCOMING + "-extra",
    ],
)
def test_malformed_incoming_traceparent_is_not_passed_on(value: str) -> None:
    assert not valid_traceparent(value)
    with incoming_traceparent(value):
        assert outgoing_trace_headers() == []
