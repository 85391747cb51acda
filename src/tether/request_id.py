"""The ambient request id: the one string that ties a request's logs, hops and queries together.

Integrations set it when a request arrives (from `X-Request-ID`, or a new one) and pass it on
to every outgoing call; code in between reads it with `current_request_id()`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

REQUEST_ID_HEADER = "x-request-id"

_current: ContextVar[str | None] = ContextVar("tether.request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return _current.get()


def new_request_id() -> str:
    """A fresh random request id: a UUID4 in its canonical text form (from os.urandom)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
