"""The ambient request id: the one string that ties a request's logs, hops and queries together.

Integrations set it when a request arrives (from `X-Request-ID`, or a new one) and pass it on
to every outgoing call; code in between reads it with `current_request_id()`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, TypeVar

REQUEST_ID_HEADER = "x-request-id"

# Rule: a request id that comes from outside (`X-Request-ID`, `x-request-id` metadata) is
# 1-128 characters of A-Z a-z 0-9 . _ : / + = -, safe in any header, metadata entry, log line
# and `application_name` on every hop. Anything else is refused, never cleaned up or replaced:
# an id passed on must be one every tether service downstream accepts too.
REQUEST_ID_PATTERN = r"[A-Za-z0-9._:/+=-]{1,128}"
REQUEST_ID_RULE = "1-128 characters of letters, digits and . _ : / + = -"

# What a header or metadata entry given twice with different values is told (request ids in
# the middleware and gRPC servers; every calling-convention header in the gateway).
REPEATED_WITH_DIFFERENT_VALUES = "given more than once, with different values"

_current: ContextVar[str | None] = ContextVar("tether.request_id", default=None)

Name = TypeVar("Name", str, bytes)


def read_incoming(
    pairs: Iterable[tuple[Name, Any]],
    request_id_name: Name,
    traceparent_name: Name,
    deadline_names: Container[Name],
) -> tuple[Any, bool, Any, bool]:
    """What servers read from a request's headers or metadata in one pass (names as the
    server gives them: lower-case): the request id, whether it was given twice with different
    values, the traceparent, and whether any of `deadline_names` is present (for the codec).

    Rules for repeats: a request id given more than once must carry the same value each time
    (servers refuse the request otherwise, as the gateway does: which one would tie the logs
    together?); a traceparent given more than once is no valid trace context (W3C Trace
    Context), so None is returned for it and none is passed on.
    """
    request_id = traceparent = None
    ids_differ = traceparent_repeated = carries_deadline = False
    for name, value in pairs:
        if name == request_id_name:
            if request_id is not None and value != request_id:
                ids_differ = True
            request_id = value
        elif name == traceparent_name:
            traceparent_repeated = traceparent is not None
            traceparent = value
        elif name in deadline_names:
            carries_deadline = True
    return request_id, ids_differ, None if traceparent_repeated else traceparent, carries_deadline


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return _current.get()


def new_request_id() -> str:
    """A fresh request id: a UUID4 in its canonical text form, unique without a system call.

    Rule: the first 18 hex digits are random per process (drawn from `os.urandom` at import
    and again in every child after a fork); the last 12 are a per-process counter scrambled
    by a random odd multiplier (a bijection on 48 bits). So ids never repeat within a process
    (for 2**48 ids) and collide across processes only if ~70 random bits do. An id names a
    request; it is not a secret and must not be used as one.
    """
    return _template % ((next(_counter) * _stride) & _MASK_48)


_MASK_48 = (1 << 48) - 1
_template = ""
_stride = 1
_counter = itertools.count(1)


def _new_process_sequence() -> None:
    global _template, _stride, _counter
    bits = int.from_bytes(os.urandom(16), "big")
    prefix = (
        f"{(bits >> 64) & 0xFFFFFFFFFFFF0FFF | 0x4000:016x}{(bits >> 48) & 0x3FFF | 0x8000:04x}"
    )
    _template = f"{prefix[:8]}-{prefix[8:12]}-{prefix[12:16]}-{prefix[16:]}-%012x"
    _stride = (bits & _MASK_48) | 1
    _counter = itertools.count(1)


_new_process_sequence()
os.register_at_fork(after_in_child=_new_process_sequence)


def set_request_id(request_id: str | None) -> Token[str | None]:
    """Make `request_id` ambient until `reset_request_id(token)` (for integrations' hot paths)."""
    return _current.set(request_id)


def reset_request_id(token: Token[str | None]) -> None:
    _current.reset(token)


@contextmanager
def request_id_scope(request_id: str | None) -> Iterator[str | None]:
    """Make `request_id` the ambient request id for the block."""
    token = _current.set(request_id)
    try:
        yield request_id
    finally:
        _current.reset(token)
