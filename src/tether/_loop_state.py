"""State kept once per event loop, on the loop itself, so it lives and dies with the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Generic, TypeVar

_T = TypeVar("_T")


def kept_on_loop(
    loop: asyncio.AbstractEventLoop,
    attribute: str,
    make: Callable[[asyncio.AbstractEventLoop], _T],
) -> _T:
    """The loop's one `make(loop)`, stored as `loop.<attribute>` on first use.

    A loop that takes no attributes gets a fresh one on every call: correct, only less shared.
    """
    try:
        found: _T = getattr(loop, attribute)
    except AttributeError:
        found = make(loop)
        with suppress(AttributeError):
            setattr(loop, attribute, found)
    return found


class PerLoop(Generic[_T]):
    """One `make(loop)` per event loop, kept on the loop (`kept_on_loop`), with the one looked
    up last remembered in `last`, so that a hot path finds it with one identity test:

        found = per_loop.last
        if found._loop is not loop:
            found = per_loop.of(loop)

    Rule: `make(None)` builds a placeholder whose `_loop` is no loop, the first `last`. Any
    thread may replace `last`; a caller keeps the object it found.
    """

    __slots__ = ("_attribute", "_make", "last")

    def __init__(self, attribute: str, make: Callable[[asyncio.AbstractEventLoop], _T]) -> None:
        self._attribute = attribute
        self._make = make
        self.last: _T = make(None)  # type: ignore[arg-type]  # the placeholder: matches no loop

    def of(self, loop: asyncio.AbstractEventLoop) -> _T:
        """The loop's one object (made on first use), now also `last`."""
        found = self.last = kept_on_loop(loop, self._attribute, self._make)
        return found
