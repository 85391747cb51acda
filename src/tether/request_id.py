"""The ambient request id: the one string that ties a request's logs, hops and queries together.

Integrations set it when a request arrives (from `X-Request-ID`, or a new one) and pass it on
to every outgoing call; code in between reads it with `current_request_id()`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"

_current: ContextVar[str | None] = ContextVar("tether.request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return _current.get()


def new_request_id() -> str:
    """A fresh random request id (a UUID4 in its canonical text form)."""
    return str(uuid.uuid4())


@contextmanager
def request_id_scope(request_id: str | None) -> Iterator[str | None]:
    """Make `request_id` the ambient request id for the block."""
    token = _current.set(request_id)
    try:
        yield request_id
    finally:
        _current.reset(token)
