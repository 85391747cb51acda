"""When the gateway may try an upstream call again: sans-I/O decisions, tested with a fake clock.

Rules (the calling-convention table is the default policy):
1. Only idempotent methods are retried: GET, HEAD, OPTIONS, PUT, DELETE. POST and PATCH only
   when the request carries `Idempotency-Key` and its service sets `retry_with_idempotency_key`.
2. Only failures that mean "the upstream did not do the work" are retried: a 502, 503 or 504
   answer, a connection refused, reset or closed before any response byte, or a name that does
   not resolve. Never a per-attempt read timeout (the work may be running), never once the
   answer has started to reach the client.
3. How many retries: the `retries` of the zone policy of the first endpoint tried (same zone:
   1, other zone: 0 by default).
4. Every retry is drawn from the service's `RetryBudget`; with none left the failure is answered
   as it is. With every endpoint down, attempts stay below (1 + ratio) x requests plus the
   per-second floor.
5. Backoff before retry n is uniform in [0, min(cap, base * 2**(n-1))] (full jitter). A retry
   happens only if its backoff, the margin and `min_attempt` all fit in what is left of the
   budget: the deadline covers every attempt and every pause.
6. A pooled connection that the upstream closed just as it was reused (closed before a byte of
   the answer came: the upstream ended an idle keep-alive connection, a race every HTTP/1.1
   pool has) says nothing about the upstream's health. A request rule 1 allows is sent again
   at once, on a new connection to the same endpoint, once per request; that is neither a
   retry of rule 3 nor drawn from the budget.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
RETRIED_STATUSES = frozenset({502, 503, 504})
ATTEMPT_HEADER = b"x-tether-attempt"  # 1 for the first attempt, 2 for the first retry, ...


@dataclass(frozen=True, slots=True)
class RetrySettings:
    backoff_base: float = 0.025
    backoff_cap: float = 0.25
    min_attempt: float = 0.01  # no attempt starts with less than margin + this left
    budget_ratio: float = 0.2
    budget_per_second: float = 10.0
    budget_window: float = 10.0
    body_buffer: int = 64 * 1024  # request bodies up to this size are kept for a retry


def method_may_retry(method: bytes, *, idempotency_key: bool, service_allows_key: bool) -> bool:
    """Rule 1."""
    if method in IDEMPOTENT_METHODS:
        return True
    return method in (b"POST", b"PATCH") and idempotency_key and service_allows_key


def backoff(retry: int, settings: RetrySettings, rng: random.Random) -> float:
    """Rule 5: the pause before retry number `retry` (1 for the first retry)."""
    ceiling = min(settings.backoff_cap, settings.backoff_base * 2 ** (retry - 1))
    return rng.uniform(0.0, ceiling)


def fits(pause: float, remaining: float, margin: float, settings: RetrySettings) -> bool:
    """Rule 5: a pause of `pause` seconds leaves room for one more attempt."""
    return remaining - pause >= margin + settings.min_attempt


class RetryBudget:
    """Retries allowed: `ratio` of the requests plus `per_second` per second, over a sliding
    window of `window` seconds kept as ten slots (Finagle's RetryBudget, counted exactly).

    One budget per service per gateway process: the ratio holds for the whole fleet, the
    per-second floor is per process (documented in docs/gateway.md).
    """

    _SLOTS = 10

    def __init__(
        self,
        ratio: float = 0.2,
        per_second: float = 10.0,
        window: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or per_second < 0 or window <= 0:
            raise ValueError("a retry budget needs ratio >= 0, per_second >= 0 and window > 0")
        self.ratio = ratio
        self.floor = per_second * window
        self._slot_seconds = window / self._SLOTS
        self._clock = clock
        self._requests = [0] * self._SLOTS
        self._retries = [0] * self._SLOTS
        self._slot = int(clock() / self._slot_seconds)

    def _advance(self) -> int:
        slot = int(self._clock() / self._slot_seconds)
        if slot != self._slot:
            for stale in range(self._slot + 1, min(slot, self._slot + self._SLOTS) + 1):
                self._requests[stale % self._SLOTS] = 0
                self._retries[stale % self._SLOTS] = 0
            self._slot = slot
        return slot % self._SLOTS

    def record_request(self) -> None:
        self._requests[self._advance()] += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        index = self._advance()
        if sum(self._retries) + 1 > self.ratio * sum(self._requests) + self.floor:
            return False
        self._retries[index] += 1
        return True
