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


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A real PostgreSQL: TETHER_PG_DSN if set, else an embedded one for the session."""
    from tether.postgres.embedded import postgres_dsn

    with postgres_dsn() as dsn:
        yield dsn
