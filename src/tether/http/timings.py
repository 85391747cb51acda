"""`CallTimings`: where one outbound call's time went, for both HTTP clients (aiohttp's and
httpx's). No dependency beyond the standard library."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["CallTimings"]


@dataclass(slots=True)
class CallTimings:
    """When each phase of one call ended, in seconds from its start (None: did not happen).

    `dns` and `connect` are None when a pooled connection was reused; `connect` includes TLS
    (and, through httpx, which resolves the name while connecting, name resolution: `dns` is
    always None there); `request_sent` is when the request line, headers and (for small
    bodies) body were written; `first_byte` is when the response headers had arrived;
    `body_done` when the body had.
    """

    dns: float | None = None
    connect: float | None = None
    request_sent: float | None = None
    first_byte: float | None = None
    body_done: float | None = None
    _start: float = field(default=0.0, repr=False)

    def mark(self, phase: str) -> None:
        setattr(self, phase, time.perf_counter() - self._start)
