"""Validation of the settings every integration shares, so each refuses bad values alike."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable


def positive_seconds(name: str, value: object) -> float:
    """`value` as seconds; ValueError unless it is a finite number above zero."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def server_budgets(default_budget: object, max_budget: object) -> tuple[float, float]:
    """A server's (default, maximum) budget; the default may not exceed the maximum."""
    default = positive_seconds("default_budget", default_budget)
    maximum = positive_seconds("max_budget", max_budget)
    if default > maximum:
        raise ValueError(f"default_budget ({default} s) cannot exceed max_budget ({maximum} s)")
    return default, maximum


def margin_seconds(value: object) -> float:
    """A per-hop margin: zero or more finite seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"margin must be zero or more seconds, got {value!r}")
    return float(value)


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0}


def parse_duration(text: str) -> float:
    """`250ms`, `1.5s` or `2m` as seconds; ValueError for anything else (no sign, no space,
    no bare number: the unit is required)."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected a duration such as 250ms, 1.5s or 2m, got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


# A path prefix: `/`, then anything but whitespace, control characters, `?` and `#`.
_PATH_PREFIX = re.compile(r"/[^\s\x00-\x1f\x7f?#]*")


class PathPrefixes:
    """Paths, or gRPC method names, each with everything below it: `/events` covers `/events`
    and `/events/orders`, not `/eventsource`; `/pkg.Feed` covers `/pkg.Feed/Watch`; `/`
    covers every path. A trailing `/` is ignored. Empty when given no entries."""

    __slots__ = ("_below", "_exact", "entries")

    def __init__(self, name: str, value: object) -> None:
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise ValueError(f"{name} must be a list of paths such as ['/events'], got {value!r}")
        entries = []
        for entry in value:
            if not isinstance(entry, str) or not _PATH_PREFIX.fullmatch(entry):
                raise ValueError(
                    f"{name}: each entry must be a path starting with / (no spaces, ? or #), "
                    f"got {entry!r}"
                )
            entries.append(entry.rstrip("/"))
        self.entries = tuple(entry or "/" for entry in entries)
        self._exact = frozenset(entries)
        self._below = tuple(entry + "/" for entry in entries)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and (path in self._exact or path.startswith(self._below))

    def __bool__(self) -> bool:
        return bool(self._below)

    def __repr__(self) -> str:
        return f"PathPrefixes({list(self.entries)!r})"
