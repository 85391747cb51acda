"""Retry decisions, the retry budget and endpoint choice: sans-I/O, with a fake clock."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from tether.gateway.balancing import LONGEST_REST, connected, pick, refused
from tether.gateway.retries import (
    RetryBudget,
    RetrySettings,
    backoff,
    fits,
    method_may_retry,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"])
def test_idempotent_methods_are_retried(method: bytes) -> None:
    assert method_may_retry(method, idempotency_key=False, service_allows_key=False)


@pytest.mark.parametrize("method", [b"POST", b"PATCH"])
def test_post_and_patch_need_a_key_and_a_service_that_allows_it(method: bytes) -> None:
    assert not method_may_retry(method, idempotency_key=False, service_allows_key=True)
    assert not method_may_retry(method, idempotency_key=True, service_allows_key=False)
    assert method_may_retry(method, idempotency_key=True, service_allows_key=True)


def test_unknown_methods_are_never_retried() -> None:
    assert not method_may_retry(b"CONNECT", idempotency_key=True, service_allows_key=True)


def test_backoff_is_full_jitter_under_a_growing_capped_ceiling() -> None:
    settings = RetrySettings(backoff_base=0.01, backoff_cap=0.05)
    rng = random.Random(7)
    for retry, ceiling in [(1, 0.01), (2, 0.02), (3, 0.04), (4, 0.05), (10, 0.05)]:
        pauses = [backoff(retry, settings, rng) for _ in range(500)]
        assert all(0.0 <= p <= ceiling for p in pauses)
        assert max(pauses) > ceiling * 0.9  # the whole range is used, not just its bottom
        assert min(pauses) < ceiling * 0.1


def test_a_retry_must_fit_its_pause_the_margin_and_the_minimum_attempt() -> None:
    settings = RetrySettings(min_attempt=0.01)
    assert fits(0.02, remaining=0.05, margin=0.005, settings=settings)
    assert not fits(0.04, remaining=0.05, margin=0.005, settings=settings)
    assert not fits(0.0, remaining=0.014, margin=0.005, settings=settings)


def test_budget_allows_the_floor_then_the_ratio() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, per_second=1, window=10, clock=clock)
    for _ in range(100):
        budget.record_request()
    allowed = 0
    while budget.try_withdraw():
        allowed += 1
    assert allowed == 20 + 10  # 20% of 100 requests plus 1/s over a 10 s window


def test_budget_forgets_what_left_the_window() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, per_second=1, window=10, clock=clock)
    assert sum(budget.try_withdraw() for _ in range(20)) == 10
    clock.now += 5
    assert not budget.try_withdraw()  # still inside the window
    clock.now += 6
    assert sum(budget.try_withdraw() for _ in range(20)) == 10  # a fresh window


def test_budget_with_everything_failing_keeps_attempts_near_one_point_two() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, per_second=10, window=10, clock=clock)
    requests = attempts = 0
    for _ in range(60_000):  # 60 s at 1,000 requests a second, every attempt failing
        clock.now += 0.001
        budget.record_request()
        requests += 1
        attempts += 1
        if budget.try_withdraw():
            attempts += 1
    assert attempts <= 1.2 * requests + 10 * 60
    assert attempts >= 1.2 * requests * 0.95


@pytest.mark.parametrize(
    ("ratio", "per_second", "window"), [(-0.1, 1, 1), (0.1, -1, 1), (0.1, 1, 0)]
)
def test_budget_refuses_bad_settings(ratio: float, per_second: float, window: float) -> None:
    with pytest.raises(ValueError, match="retry budget"):
        RetryBudget(ratio, per_second, window)


@dataclass(eq=False)
class Endpoint:
    name: str
    zone: str
    in_flight: int = 0
    resting_until: float = 0.0
    refusals: int = 0


def test_own_zone_first_while_any_is_usable() -> None:
    a, b, c = Endpoint("a", "z1"), Endpoint("b", "z2"), Endpoint("c", "z2")
    rng = random.Random(1)
    assert {pick([a, b, c], zone="z1", now=0, rng=rng).name for _ in range(50)} == {"a"}
    refused(a, now=0)
    assert {pick([a, b, c], zone="z1", now=0.5, rng=rng).name for _ in range(50)} == {"b", "c"}


def test_two_choices_pick_the_less_busy() -> None:
    idle, busy = Endpoint("idle", "z"), Endpoint("busy", "z", in_flight=5)
    rng = random.Random(3)
    assert {pick([idle, busy], zone="z", now=0, rng=rng).name for _ in range(50)} == {"idle"}


def test_two_choices_spread_load_over_equals() -> None:
    endpoints = [Endpoint(str(i), "z") for i in range(4)]
    rng = random.Random(5)
    seen = {pick(endpoints, zone="z", now=0, rng=rng).name for _ in range(200)}
    assert seen == {"0", "1", "2", "3"}


def test_a_retry_avoids_the_endpoint_that_failed() -> None:
    a, b = Endpoint("a", "z"), Endpoint("b", "z")
    rng = random.Random(2)
    assert {pick([a, b], zone="z", now=0, rng=rng, avoid=a).name for _ in range(30)} == {"b"}
    assert pick([a], zone="z", now=0, rng=rng, avoid=a) is a  # nothing else to try


def test_rest_grows_then_caps_and_a_connection_ends_it() -> None:
    e = Endpoint("a", "z")
    rests = []
    for _ in range(8):
        refused(e, now=0)
        rests.append(e.resting_until)
    assert rests[:4] == [1.0, 2.0, 4.0, 8.0]
    assert rests[-1] == LONGEST_REST
    connected(e)
    assert e.resting_until == 0
    assert e.refusals == 0


def test_when_all_rest_the_soonest_back_is_tried() -> None:
    a, b = Endpoint("a", "z"), Endpoint("b", "z")
    refused(a, now=0)
    refused(b, now=0)
    refused(b, now=0)
    rng = random.Random(0)
    assert pick([a, b], zone="z", now=0.1, rng=rng) is a
