"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest


@pytest.fixture
async def monitor(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own to the test PostgreSQL, for watching backends from the side."""
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()
