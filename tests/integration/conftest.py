"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from .pg_helpers import app_name


@pytest.fixture
async def monitor(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own to the test PostgreSQL, for watching backends from the side."""
    conn = await asyncpg.connect(pg_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def table(monitor: asyncpg.Connection) -> AsyncIterator[str]:
    """A table of its own (one `n int` column) in the test PostgreSQL, dropped afterwards."""
    name = f"scratch_{app_name()}"
    await monitor.execute(f"CREATE TABLE {name} (n int)")
    yield name
    await monitor.execute(f"DROP TABLE {name}")


@pytest.fixture
async def slow_commit_table(monitor: asyncpg.Connection) -> AsyncIterator[str]:
    """A table whose rows are checked at COMMIT by a deferred trigger that takes a second:
    a COMMIT that the budget's `statement_timeout` backstop cancels on the server."""
    name = f"slow_commit_{app_name()}"
    await monitor.execute(
        f"CREATE TABLE {name} (n int);"
        f"CREATE FUNCTION {name}_check() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;"
        f"CREATE CONSTRAINT TRIGGER {name}_at_commit AFTER INSERT ON {name}"
        f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}_check();"
    )
    yield name
    await monitor.execute(f"DROP TABLE {name}; DROP FUNCTION {name}_check();")
