"""State kept once per event loop, on the loop itself, so it lives and dies with the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

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
