"""Named budgets: one time budget per kind of work, declared once, chosen where the work runs.

    BUDGETS = tether.Budgets(payment=3, report=300, notification=5)

    async with BUDGETS.use("payment"):      # at most 3 s, and never more than the caller has
        await charge(card)

Rule: a named budget only narrows. Inside a request with 800 ms left, `use("report")` gives
800 ms, not 300 s; the name says how long this kind of work may take when nothing tighter
applies.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from tether._settings import positive_seconds
from tether.deadline import DeadlineScope, deadline_after

__all__ = ["Budgets"]


class Budgets(Mapping[str, float]):
    """A fixed set of named budgets, in seconds."""

    def __init__(self, budgets: Mapping[str, float] | None = None, /, **named: float) -> None:
        merged = {**(budgets or {}), **named}
        if not merged:
            raise ValueError("declare at least one named budget")
        self._budgets = {
            _name(name): positive_seconds(f"budget {name!r}", seconds)
            for name, seconds in merged.items()
        }

    def use(self, name: str) -> DeadlineScope:
        """A deadline block of the named budget, capped by the caller's deadline."""
        try:
            seconds = self._budgets[name]
        except KeyError:
            known = ", ".join(sorted(self._budgets))
            raise KeyError(f"no budget named {name!r}; declared: {known}") from None
        return deadline_after(seconds)

    def __getitem__(self, name: str) -> float:
        return self._budgets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._budgets)

    def __len__(self) -> int:
        return len(self._budgets)

    def __repr__(self) -> str:
        return f"Budgets({self._budgets!r})"


def _name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a budget's name must be a non-empty string, got {name!r}")
    return name
