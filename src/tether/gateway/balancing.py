"""Choosing an endpoint: power of two choices on requests in flight, own zone first, and a
passive health check. Sans-I/O: works on anything shaped like `Choice`.

Rules:
1. Endpoints in the gateway's own zone are preferred while any of them is usable.
2. Among the candidates, two are drawn at random and the one with fewer requests in flight wins
   (ties: the first drawn).
3. An endpoint that refuses a connection rests: it is passed over for 1 s, then 2 s, 4 s ...
   up to 30 s while refusals go on; one successful connection ends the rest.
4. A retry avoids the endpoint that just failed when the service has another.
5. When every endpoint rests, the one whose rest ends first is tried: better a try than a
   certain refusal.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

FIRST_REST = 1.0
LONGEST_REST = 30.0


class Choice(Protocol):
    zone: str
    in_flight: int
    resting_until: float
    refusals: int


C = TypeVar("C", bound=Choice)


def pick(
    endpoints: Sequence[C],
    *,
    zone: str,
    now: float,
    rng: random.Random,
    avoid: C | None = None,
) -> C:
    """The endpoint for the next attempt (rules 1, 2, 4 and 5)."""
    if len(endpoints) == 1:
        return endpoints[0]
    others = [e for e in endpoints if e is not avoid] or list(endpoints)
    usable = [e for e in others if e.resting_until <= now]
    if not usable:
        return min(others, key=lambda e: e.resting_until)
    local = [e for e in usable if e.zone == zone]
    candidates = local or usable
    if len(candidates) == 1:
        return candidates[0]
    first, second = rng.sample(candidates, 2)
    return second if second.in_flight < first.in_flight else first


def refused(endpoint: Choice, now: float) -> None:
    """Rule 3: the endpoint refused a connection."""
    endpoint.refusals += 1
    rest = min(LONGEST_REST, FIRST_REST * 2 ** (endpoint.refusals - 1))
    endpoint.resting_until = now + rest


def connected(endpoint: Choice) -> None:
    """Rule 3: a connection succeeded."""
    endpoint.refusals = 0
    endpoint.resting_until = 0.0
