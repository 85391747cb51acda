"""asyncpg with the budget: the primary PostgreSQL driver of tether (the `postgres` extra).

    pool = await tether.postgres.create_pool(dsn, max_size=10)
    async with pool.acquire() as conn:            # waits at most the remaining budget
        rows = await conn.fetch("SELECT ...")     # timeout = remaining - margin
        async with conn.transaction():            # + SET LOCAL statement_timeout backstop
            await conn.execute("UPDATE ...")

- Waiting for a pool connection is bounded by the remaining budget; running out while waiting
  raises `PoolExhausted`. No connection is taken when the budget is already gone.
- No statement outlives the budget. When the running task's own deadline block enforces the
  deadline, its cancellation at the deadline makes asyncpg send PostgreSQL's cancel request;
  otherwise (a task that only inherited the deadline, or an explicit shorter `timeout=`) the
  statement gets `remaining - margin` as asyncpg's timeout, with the same effect. Either way the
  server stops the statement (measured: the backend leaves `active` within a few ms) and the
  connection is reusable at once.
- Inside `conn.transaction()`, `SET LOCAL statement_timeout` to the remaining budget makes the
  server end the statement even if this process dies.
- The request id goes into `application_name` as `<application_name> <request id>`, set on
  checkout when a request id is ambient (one round trip per checkout; asyncpg's pool resets it
  on release). `application_name=None` turns tagging off.
- Connections go back to the pool healthy after a cancelled statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from tether._settings import margin_seconds
from tether.deadline import deadline_enforced_here
from tether.errors import TetherError, UpstreamUnavailable
from tether.postgres._common import (
    QUERY_CANCELED,
    RELEASE_TIMEOUT,
    application_name,
    backstop_sql,
    bounded_transaction,
    pool_exhausted,
    query_canceled,
    quote_literal,
    statement_timed_out,
)
from tether.wire import DEFAULT_MARGIN, call_timeout

__all__ = ["Connection", "Pool", "PoolClosed", "create_pool"]


class PoolClosed(TetherError):
    """The pool was closed; no connection can be taken from it."""


async def create_pool(
    dsn: str | None = None,
    *,
    margin: float = DEFAULT_MARGIN,
    application_name: str | None = "tether",
    **kwargs: Any,
) -> Pool:
    """An asyncpg pool wrapped by tether. Keyword arguments go to `asyncpg.create_pool`.

    Raises ValueError for a malformed DSN and `UpstreamUnavailable` when the server cannot be
    reached; under a deadline, connecting is bounded by the budget too.
    """
    margin = margin_seconds(margin)
    limit = call_timeout(margin=margin)
    try:
        async with asyncio.timeout(limit):
            pool = await asyncpg.create_pool(dsn, **kwargs)
    except TimeoutError as exc:
        raise statement_timed_out(limit or 0.0, budget_bound=True) from exc
    except (ValueError, asyncpg.ClientConfigurationError) as exc:
        raise ValueError(f"invalid PostgreSQL DSN or settings: {exc}") from exc
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InvalidCatalogNameError) as exc:
        raise UpstreamUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    return Pool(pool, margin=margin, application_name=application_name)


class Pool:
    """An asyncpg pool whose checkouts and statements spend the ambient budget."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        margin: float = DEFAULT_MARGIN,
        application_name: str | None = "tether",
    ) -> None:
        self.raw = pool
        self._margin = margin_seconds(margin)
        self._prefix = application_name
        self._closed = False

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A connection, waiting at most the remaining budget for one."""
        if self._closed:
            raise PoolClosed("the pool is closed")
        limit = call_timeout(margin=self._margin)  # raises when the budget is gone
        try:
            raw = await self.raw.acquire(timeout=limit)
        except TimeoutError as exc:
            raise pool_exhausted(limit or 0.0, self.raw.get_max_size()) from exc
        try:
            connection = Connection(raw, margin=self._margin, application_name=self._prefix)
            await connection.tag()
            yield connection
        finally:
            # Releasing is clean-up, not the request's work: asyncpg would otherwise reuse the
            # acquire timeout (what was left of the budget) to wait out a cancelled statement
            # and reset the connection, and terminate a healthy connection when that ran out.
            await self.raw.release(raw, timeout=RELEASE_TIMEOUT)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as conn:
            return await conn.execute(query, *args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return await conn.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def close(self) -> None:
        self._closed = True
        await self.raw.close()

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Connection:
    """An asyncpg connection whose statements get the remaining budget as their timeout."""

    __slots__ = ("_limit", "_margin", "_prefix", "raw")

    def __init__(
        self, raw: Any, *, margin: float = DEFAULT_MARGIN, application_name: str | None = None
    ) -> None:
        self.raw = raw
        self._margin = margin
        self._prefix = application_name
        self._limit: float | None = None  # the budget-derived limit of the latest statement

    async def tag(self) -> None:
        """Put the ambient request id into this connection's application_name (if it differs)."""
        tag = application_name(self._prefix)
        if tag is not None and self.raw.get_settings().application_name != tag:
            await self.execute(f"SET application_name = {quote_literal(tag)}")

    # Each statement calls asyncpg directly (no extra coroutine frame on the hot path) with
    # `_timeout()`, and translates its failure with `_translated()`. `_timeout()` runs before the
    # `try`: when it refuses to start a statement, its `DeadlineExceeded` (a TimeoutError) must
    # reach the caller as it is, not be translated as if the statement had timed out.

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        limit = self._timeout(timeout)
        try:
            result: str = await self.raw.execute(query, *args, timeout=limit)
        except _DRIVER_ERRORS as exc:
            raise self._translated(exc, timeout) from exc
        return result

    async def executemany(self, query: str, args: Any, *, timeout: float | None = None) -> None:
        limit = self._timeout(timeout)
        try:
            await self.raw.executemany(query, args, timeout=limit)
        except _DRIVER_ERRORS as exc:
            raise self._translated(exc, timeout) from exc

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        limit = self._timeout(timeout)
        try:
            rows: list[asyncpg.Record] = await self.raw.fetch(query, *args, timeout=limit)
        except _DRIVER_ERRORS as exc:
            raise self._translated(exc, timeout) from exc
        return rows

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> asyncpg.Record | None:
        limit = self._timeout(timeout)
        try:
            row: asyncpg.Record | None = await self.raw.fetchrow(query, *args, timeout=limit)
        except _DRIVER_ERRORS as exc:
            raise self._translated(exc, timeout) from exc
        return row

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        limit = self._timeout(timeout)
        try:
            return await self.raw.fetchval(query, *args, timeout=limit)
        except _DRIVER_ERRORS as exc:
            raise self._translated(exc, timeout) from exc

    @asynccontextmanager
    async def transaction(self, **kwargs: Any) -> AsyncIterator[Connection]:
        """A transaction with tether's server-side backstop (`SET LOCAL statement_timeout`),
        whose COMMIT is bounded by the budget and translated like a statement
        (`bounded_transaction`)."""
        translate = self._translate_driver_error
        async with bounded_transaction(self.raw.transaction(**kwargs), translate, self._margin):
            backstop = backstop_sql(self._prefix)
            if backstop is not None:
                await self.execute(backstop)
            yield self

    def _translate_driver_error(self, exc: BaseException) -> BaseException | None:
        return self._translated(exc, None) if isinstance(exc, _DRIVER_ERRORS) else None

    def _timeout(self, explicit: float | None) -> float | None:
        """The timeout to give asyncpg for one statement; raises when the budget is gone.

        When this task's own deadline block will cancel it at the deadline, asyncpg answers that
        cancellation by cancelling the statement on the server: a per-statement timer would
        only duplicate it (and cost a timer per statement).
        """
        limit = self._limit = call_timeout(explicit, margin=self._margin)
        if explicit is None and deadline_enforced_here():
            return None
        return limit

    def _translated(self, exc: BaseException, explicit: float | None) -> BaseException:
        """tether's error for a driver failure (or `exc` itself when it has none)."""
        limit = self._limit
        if isinstance(exc, TimeoutError):
            budget_bound = limit is not None and (explicit is None or limit < explicit)
            return statement_timed_out(limit or 0.0, budget_bound)
        if isinstance(exc, asyncpg.PostgresError):
            if exc.sqlstate == QUERY_CANCELED:
                return query_canceled(str(exc), self._margin)
            return exc
        if isinstance(exc, asyncpg.InterfaceError) and "another operation" in str(exc):
            return exc
        return UpstreamUnavailable(f"lost the PostgreSQL connection: {exc}")


# Failures a statement's driver call can end with that tether translates.
_DRIVER_ERRORS = (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
