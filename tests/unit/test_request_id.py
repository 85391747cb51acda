"""The request-id rules servers apply to what a request carries (sans-I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from tether.request_id import read_incoming


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], (None, False, None, False)),
        ([("x-request-id", "a"), ("x-request-id", "a")], ("a", False, None, False)),
        ([("x-request-id", "a"), ("x-request-id", "b")], ("b", True, None, False)),
        (
            [("x-request-id", "a"), ("x-request-id", "b"), ("x-request-id", "a")],
            ("a", True, None, False),
        ),
        ([("traceparent", "t1")], (None, False, "t1", False)),
        ([("traceparent", "t1"), ("traceparent", "t1")], (None, False, None, False)),
        ([("x-request-timeout", "5"), ("host", "x")], (None, False, None, True)),
        ([(b"x-request-id", b"a"), (b"traceparent", b"t")], (b"a", False, b"t", False)),
    ],
)
def test_read_incoming_applies_the_rules_for_repeats(pairs: list[Any], expected: Any) -> None:
    """One pass over a request's headers or metadata: a request id repeated with different
    values is flagged, even when a later repeat matches the first; any repeated traceparent is
    none; the deadline names are only noticed (str names for gRPC, bytes for ASGI)."""
    names = ("x-request-id", "traceparent", {"x-request-timeout"})
    if pairs and isinstance(pairs[0][0], bytes):
        names = (b"x-request-id", b"traceparent", {b"x-request-timeout"})
    assert read_incoming(pairs, *names) == expected
