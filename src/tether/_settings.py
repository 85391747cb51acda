"""Validation of the settings every integration shares, so each refuses bad values alike."""

from __future__ import annotations

import math


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
