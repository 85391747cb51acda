"""The Deadline value: construction, arithmetic, ordering and bad input."""

from __future__ import annotations

import math

import pytest

from tether import Deadline, earliest
from tether.testing import VirtualClock


def test_after_is_relative_to_now(clock: VirtualClock) -> None:
    """Deadline.after(s) lies s seconds ahead on the monotonic clock."""
    deadline = Deadline.after(2.5)
    assert deadline.when == clock.monotonic() + 2.5
    assert deadline.remaining() == 2.5


def test_remaining_counts_down_and_never_goes_negative(clock: VirtualClock) -> None:
    """remaining() shrinks with time and stops at zero; expired flips at the instant."""
    deadline = Deadline.after(1)
    clock.advance(0.25)
    assert deadline.remaining() == pytest.approx(0.75)
    assert not deadline.expired
    clock.advance(0.75)
    assert deadline.expired
    clock.advance(10)
    assert deadline.remaining() == 0.0


def test_non_positive_budget_is_already_expired(clock: VirtualClock) -> None:
    """A zero or negative budget is a valid, already expired deadline."""
    assert Deadline.after(0).expired
    assert Deadline.after(-3).remaining() == 0.0


def test_at_takes_a_monotonic_instant(clock: VirtualClock) -> None:
    """Deadline.at(t) is the deadline at monotonic instant t."""
    assert Deadline.at(clock.monotonic() + 4) == Deadline.after(4)


def test_ordering_equality_and_hash() -> None:
    """Deadlines order and compare by their instant, and hash like equal values."""
    early, late = Deadline.at(10.0), Deadline.at(20.0)
    assert early < late <= late
    assert late > early >= early
    assert Deadline.at(10.0) == early
    assert early != late
    assert hash(Deadline.at(10.0)) == hash(early)
    assert early != 10.0
    assert sorted([late, early]) == [early, late]


def test_is_immutable() -> None:
    """A Deadline cannot be changed after it is made."""
    deadline = Deadline.at(1.0)
    with pytest.raises(AttributeError):
        deadline._when = 5.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        deadline.extra = 1  # type: ignore[attr-defined]


def test_earlier_and_earliest() -> None:
    """earlier() keeps the earlier of two; earliest() ignores None."""
    early, late = Deadline.at(1.0), Deadline.at(2.0)
    assert early.earlier(late) is early
    assert late.earlier(early) is early
    assert late.earlier(None) is late
    assert earliest(None, late, None, early) is early
    assert earliest() is None
    assert earliest(None) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_budgets_are_refused(bad: float) -> None:
    """NaN and infinite budgets raise ValueError: "no deadline" is None, not infinity."""
    with pytest.raises(ValueError, match="finite"):
        Deadline.after(bad)
    with pytest.raises(ValueError, match="finite"):
        Deadline.at(bad)


@pytest.mark.parametrize("bad", ["5", None, b"1", [1]])
def test_non_numbers_are_refused(bad: object) -> None:
    """A budget that is not a number raises TypeError naming the value."""
    with pytest.raises(TypeError, match="number of seconds"):
        Deadline.after(bad)  # type: ignore[arg-type]
