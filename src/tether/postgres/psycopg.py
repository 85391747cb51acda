"""psycopg 3 (async) with the budget (the `psycopg` extra: psycopg and psycopg_pool).

    pool = await tether.postgres.psycopg.open_pool(dsn, max_size=10)
    async with pool.acquire() as conn:            # waits at most the remaining budget
        rows = await conn.fetch("SELECT ...")     # cancelled on the server at the budget
        async with conn.transaction():            # + SET LOCAL statement_timeout backstop
            ...

psycopg has no per-statement timeout; each statement runs under `asyncio.timeout` set to the
remaining budget minus the margin, and psycopg answers the cancellation by sending PostgreSQL's
cancel request (measured: the backend stops within about 10 ms). Errors are translated as for
asyncpg; the request id goes into `application_name` on checkout.

Transactions follow psycopg_pool's `connection()`: leaving `acquire()` commits what the block
left open, or rolls it back when the block raised (see `Pool.acquire`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import psycopg
import psycopg_pool
from psycopg.pq import TransactionStatus

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

__all__ = ["Connection", "Pool", "open_pool"]


async def open_pool(
    conninfo: str,
    *,
    margin: float = DEFAULT_MARGIN,
    application_name: str | None = "tether",
    **kwargs: Any,
) -> Pool:
    """An opened psycopg_pool.AsyncConnectionPool wrapped by tether (kwargs go to it)."""
    margin = margin_seconds(margin)
    _check_conninfo(conninfo)
    limit = call_timeout(margin=margin)
    wait = limit if limit is not None else OPEN_TIMEOUT
    # One direct connection first: psycopg_pool would retry a bad server quietly until its
    # timeout, where this fails at once with the server's (or resolver's) own words.
    try:
        async with asyncio.timeout(wait):
            probe = await psycopg.AsyncConnection.connect(conninfo, **kwargs.get("kwargs", {}))
        await probe.close()
    except (psycopg.OperationalError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"cannot connect to PostgreSQL: {exc or 'timed out'}") from exc
    raw = psycopg_pool.AsyncConnectionPool(conninfo, open=False, **kwargs)
    try:
        await raw.open(wait=True, timeout=wait)
    except psycopg_pool.PoolTimeout as exc:
        await raw.close()
        raise UpstreamUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    return Pool(raw, margin=margin, application_name=application_name)


# Seconds to wait for a pool's first connections when no deadline is ambient.
OPEN_TIMEOUT = 30.0


def _check_conninfo(conninfo: str) -> None:
    """ValueError for a DSN that cannot be right (libpq would say so only when connecting)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"invalid PostgreSQL DSN: {exc}") from exc
    port = str(params.get("port") or "")
    if port and not all(part.isdigit() for part in port.split(",")):
        raise ValueError(f"invalid PostgreSQL DSN: port {port!r} is not a number")


class Pool:
    """A psycopg async pool whose checkouts and statements spend the ambient budget."""

    def __init__(
        self,
        raw: psycopg_pool.AsyncConnectionPool,
        *,
        margin: float = DEFAULT_MARGIN,
        application_name: str | None = "tether",
    ) -> None:
        self.raw = raw
        self._margin = margin_seconds(margin)
        self._prefix = application_name
        # Connections whose application_name holds a request's tag.
        self._tagged: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A connection, waiting at most the remaining budget for one.

        Leaving the block ends a transaction the block left open, as psycopg_pool's own
        `connection()` does: committed when the block ended normally, rolled back when it
        raised (or was cancelled). A statement run outside `transaction()` on a connection
        that is not in autocommit mode is committed here, not thrown away."""
        if self.raw.closed:
            raise TetherError("the pool is closed")
        limit = call_timeout(margin=self._margin)
        try:
            raw = await self.raw.getconn(timeout=limit)
        except psycopg_pool.PoolTimeout as exc:
            raise pool_exhausted(limit or 0.0, self.raw.max_size) from exc
        try:
            connection = Connection(raw, margin=self._margin, application_name=self._prefix)
            await self._tag(connection)
            translate = partial(_translated, margin=self._margin)
            async with bounded_transaction(_LeftOpen(raw), translate, self._margin):
                yield connection
        finally:
            await self.raw.putconn(raw)

    async def _tag(self, connection: Connection) -> None:
        """Put the request id into the connection's `application_name`, or take an earlier
        request's out of it when this one has none.

        Rule: the tag never opens a transaction. It is sent in autocommit mode, so the
        caller's own `transaction()` is a real transaction (committed at its end), not a
        savepoint inside one that tether began. A connection keeps its last tag while it
        waits in the pool (shown as idle in `pg_stat_activity`) until its next checkout."""
        raw = connection.raw
        tag = application_name(self._prefix)
        if tag is not None:
            sql = f"SET application_name = {quote_literal(tag)}"
            self._tagged.add(raw)  # before: a SET cut short may still have been applied
        elif raw in self._tagged:
            sql = "RESET application_name"
        else:
            return
        if raw.autocommit:
            await connection.execute(sql)
        else:
            await raw.set_autocommit(True)
            try:
                await connection.execute(sql)
            finally:
                await _leave_autocommit(raw)
        if tag is None:
            self._tagged.discard(raw)  # after: only a RESET that was done clears it

    async def fetchval(self, query: str, params: Sequence[Any] | None = None) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, params)

    async def close(self) -> None:
        await self.raw.close()


class Connection:
    """A psycopg async connection whose statements end with the budget."""

    __slots__ = ("_margin", "_prefix", "raw")

    def __init__(
        self,
        raw: psycopg.AsyncConnection[Any],
        *,
        margin: float = DEFAULT_MARGIN,
        application_name: str | None = None,
    ) -> None:
        self.raw = raw
        self._margin = margin
        self._prefix = application_name

    async def execute(self, query: str, params: Sequence[Any] | None = None) -> None:
        await self._run(query, params, "none")

    async def fetch(self, query: str, params: Sequence[Any] | None = None) -> list[Any]:
        rows: list[Any] = await self._run(query, params, "all")
        return rows

    async def fetchval(self, query: str, params: Sequence[Any] | None = None) -> Any:
        return await self._run(query, params, "value")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A transaction with tether's server-side backstop (`SET LOCAL statement_timeout`),
        whose COMMIT is bounded by the budget and translated like a statement
        (`bounded_transaction`)."""
        translate = partial(_translated, margin=self._margin)
        async with bounded_transaction(self.raw.transaction(), translate, self._margin):
            backstop = backstop_sql(self._prefix)
            if backstop is not None:
                await self.execute(backstop)
            yield self

    async def _run(self, query: str, params: Sequence[Any] | None, shape: str) -> Any:
        limit = call_timeout(margin=self._margin)
        try:
            # This task's own deadline block already cancels it at the deadline; otherwise bound
            # the statement here (psycopg answers the cancellation with a cancel request).
            async with asyncio.timeout(None if deadline_enforced_here() else limit):
                cursor = await self.raw.execute(query, params)
                if shape == "none":
                    return None
                rows = await cursor.fetchall()
                return rows if shape == "all" else (rows[0][0] if rows else None)
        except TimeoutError as exc:
            raise statement_timed_out(limit or 0.0, budget_bound=True) from exc
        except psycopg.OperationalError as exc:
            raise _operational(exc, self._margin) from exc


def _translated(exc: BaseException, margin: float) -> BaseException | None:
    """tether's error for psycopg's failure `exc`; None for one that stays as it is (an
    error in the caller's SQL, say)."""
    return _operational(exc, margin) if isinstance(exc, psycopg.OperationalError) else None


def _operational(exc: psycopg.OperationalError, margin: float) -> Exception:
    """A cancellation (SQLSTATE 57014, `QueryCanceled`) is ours or the server's
    (`query_canceled`); any other operational failure is a lost connection."""
    if isinstance(exc, psycopg.errors.QueryCanceled) or exc.sqlstate == QUERY_CANCELED:
        return query_canceled(str(exc), margin)
    return UpstreamUnavailable(f"lost the PostgreSQL connection: {exc}")


class _LeftOpen:
    """The transaction a checkout's statements opened on a connection that is not in
    autocommit mode, as a context to leave: committed when the block ended normally (one that
    failed is rolled back, as the server would), rolled back when it raised."""

    def __init__(self, raw: psycopg.AsyncConnection[Any]) -> None:
        self._raw = raw

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        raw = self._raw
        if exc_type is None and raw.info.transaction_status == TransactionStatus.INTRANS:
            await raw.commit()
        else:
            await _roll_back(raw)


async def _roll_back(raw: psycopg.AsyncConnection[Any]) -> None:
    """Roll back the transaction a checkout that failed left open, within `RELEASE_TIMEOUT`
    (clean-up, not the request's work: the budget may be spent). A connection that cannot
    do it is closed; the pool replaces it."""
    if raw.info.transaction_status not in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        return
    try:
        async with asyncio.timeout(RELEASE_TIMEOUT):
            await raw.rollback()
    except (psycopg.Error, TimeoutError):
        await raw.close()


async def _leave_autocommit(raw: psycopg.AsyncConnection[Any]) -> None:
    """Leave the autocommit mode the tag was sent in. A connection that cannot (its statement
    was interrupted) is closed rather than handed on in autocommit mode."""
    try:
        await raw.set_autocommit(False)
    except psycopg.Error:
        await raw.close()
