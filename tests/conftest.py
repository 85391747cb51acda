"""Shared fixtures: a virtual clock for deadline logic."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tether.testing import VirtualClock


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    """A virtual clock that tether reads for the test's duration."""
    with VirtualClock() as virtual:
        yield virtual
