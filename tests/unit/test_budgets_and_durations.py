"""Named budgets, the duration syntax shared by config and command line, and the path
prefixes of the servers' unbounded paths and methods."""

from __future__ import annotations

import pytest

from tether import Budgets, deadline_after, time_remaining
from tether._settings import PathPrefixes, parse_duration
from tether.testing import VirtualClock


def test_named_budget_applies_when_nothing_tighter_does(clock: VirtualClock) -> None:
    """use("payment") gives the payment budget outside any tighter deadline."""
    budgets = Budgets(payment=3, report=300, notification=5)

    async def main() -> float | None:
        async with budgets.use("payment"):
            return time_remaining()

    assert clock.run(main()) == 3


def test_named_budget_is_capped_by_the_caller(clock: VirtualClock) -> None:
    """Inside a request with 0.8 s left, the 300 s report budget gives 0.8 s."""
    budgets = Budgets({"report": 300})

    async def main() -> tuple[float | None, bool]:
        async with deadline_after(0.8), budgets.use("report") as block:
            return time_remaining(), block.inherited

    left, inherited = clock.run(main())
    assert left == pytest.approx(0.8)
    assert inherited


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({}, "at least one"),
        ({"payment": 0}, "positive"),
        ({"payment": -1}, "positive"),
        ({"payment": float("nan")}, "positive"),
        ({"payment": "3s"}, "positive"),
        ({"": 3}, "non-empty"),
    ],
)
def test_bad_declarations_are_refused(declared: dict[str, object], message: str) -> None:
    """Empty sets, non-positive or non-numeric seconds and empty names: ValueError."""
    with pytest.raises(ValueError, match=message):
        Budgets(declared)  # type: ignore[arg-type]


def test_unknown_name_lists_the_declared_ones() -> None:
    """Asking for an undeclared budget says which exist."""
    with pytest.raises(KeyError, match="declared: notification, payment"):
        Budgets(payment=3, notification=5).use("paymnet")


def test_budgets_read_like_a_mapping() -> None:
    """A Budgets value is a read-only mapping of names to seconds."""
    budgets = Budgets(payment=3)
    assert dict(budgets) == {"payment": 3.0}
    assert len(budgets) == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("1.5s", 1.5), ("2m", 120), ("0ms", 0), ("3s", 3), ("10485760ms", 10485.76)],
)
def test_durations(text: str, seconds: float) -> None:
    """ms, s and m, with an optional decimal part."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "5",
        "5 s",
        " 5s",
        "-5s",
        "+5s",
        "5h",
        "5S",
        "1e3ms",
        ".5s",
        "5.s",
        "nans",
        "5ms ",
        None,
        5,
    ],
)
def test_bad_durations(bad: object) -> None:
    """No unit, signs, spaces, unknown units, exponents, non-strings: ValueError."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("entries", "covered", "not_covered"),
    [
        (["/events"], ["/events", "/events/", "/events/orders/1"], ["/eventsource", "/", "/e"]),
        (["/feed/"], ["/feed", "/feed/x"], ["/feedback"]),  # the trailing / is ignored
        (["/pkg.Feed"], ["/pkg.Feed/Watch"], ["/pkg.FeedAdmin/Watch", "/pkg.Other/Watch"]),
        (["/pkg.Feed/Watch"], ["/pkg.Feed/Watch"], ["/pkg.Feed/Get", "/pkg.Feed/WatchAll"]),
        (["/"], ["/", "/anything/at/all"], []),
        ([], [], ["/", "/events"]),
    ],
)
def test_path_prefixes_cover_a_path_and_what_is_below_it(
    entries: list[str], covered: list[str], not_covered: list[str]
) -> None:
    prefixes = PathPrefixes("paths", entries)
    assert [path in prefixes for path in covered] == [True] * len(covered)
    assert [path in prefixes for path in not_covered] == [False] * len(not_covered)
    assert bool(prefixes) == bool(entries)
