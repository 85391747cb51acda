"""SQLAlchemy 2 asyncio with the budget (the `sqlalchemy` extra; asyncpg as the driver).

    engine = tether.postgres.sqlalchemy.instrument(create_async_engine(url))
    async with tether.postgres.sqlalchemy.connect(engine) as conn:     # waits at most the budget
        await conn.execute(text("SELECT ..."))

- Every transaction (SQLAlchemy 2 begins one for every statement) starts with one statement
  setting, for that transaction only, `statement_timeout` to the remaining budget and the
  request id in `application_name`: the server itself stops a statement that outlives the
  budget, even if this process dies.
- `connect()` / `session()` wait at most the remaining budget for a pool connection
  (`PoolExhausted` otherwise) and translate errors at the edge: our budget running out is
  `DeadlineExceeded`, a DBA's `statement_timeout` is `UpstreamTimeout`, a lost connection is
  `UpstreamUnavailable`.
- At the deadline, tether's cancellation reaches asyncpg, which cancels the statement on the
  server. SQLAlchemy then discards that connection and opens a new one on the next checkout (one
  new backend, a few ms on loopback): the pool stays healthy, it does not reuse the connection.

A synchronous `Engine` (psycopg, psycopg2) can be instrumented too, for code in worker threads
(a FastAPI `def` endpoint runs in a copy of its request's context): no cancellation reaches a
thread, so the backstop is what ends a statement at the budget; the server cancels it and the
driver raises its query-canceled error in the thread (`connect()` and `session()` are for async
engines only).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from tether._settings import margin_seconds
from tether.deadline import current_deadline, deadline_at
from tether.errors import TetherError, UpstreamUnavailable
from tether.postgres._common import (
    QUERY_CANCELED,
    backstop_sql,
    pool_exhausted,
    query_canceled,
)
from tether.wire import DEFAULT_MARGIN, call_timeout

__all__ = ["connect", "instrument", "session"]

# The margin each instrumented engine was given.
_margins: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()


_AnyEngine = TypeVar("_AnyEngine", AsyncEngine, Engine)


def instrument(
    engine: _AnyEngine, *, margin: float = DEFAULT_MARGIN, application_name: str | None = "tether"
) -> _AnyEngine:
    """Install tether's per-transaction backstop and request tag on `engine` (async or
    synchronous); returns it."""
    if not isinstance(engine, AsyncEngine | Engine):
        raise TypeError(f"instrument() takes a SQLAlchemy Engine or AsyncEngine, got {engine!r}")
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    _margins[sync_engine] = margin_seconds(margin)

    def on_begin(connection: Any) -> None:
        sql = backstop_sql(application_name)
        if sql is not None:
            connection.exec_driver_sql(sql)

    event.listen(sync_engine, "begin", on_begin)
    return engine


@asynccontextmanager
async def connect(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection from `engine`'s pool, waiting at most the remaining budget for it.

    Rule: the block ends with the budget. In a task the deadline already cancels (a request's
    own), that cancellation does it. In a task that only inherited the deadline (a plain
    `create_task` child), the block is put under the deadline here: SQLAlchemy's own calls
    (its COMMIT, whose deferred work PostgreSQL's `statement_timeout` does not reach) would
    otherwise run past it."""
    margin = _margins.get(engine.sync_engine, DEFAULT_MARGIN)
    limit = call_timeout(margin=margin)
    with _translated(margin):
        try:
            async with asyncio.timeout(limit):
                connection = await engine.connect()
        except TimeoutError as exc:
            raise pool_exhausted(limit or 0.0, engine.pool.size()) from exc  # type: ignore[attr-defined]
        try:
            # Inherits the caller's deadline: a no-op where this task's own block (or grpc)
            # already enforces it, armed here in a task that only inherited it.
            with deadline_at(current_deadline()):
                yield connection
        finally:
            await connection.close()


@asynccontextmanager
async def session(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session that has its connection (waiting at most the remaining budget for it) and
    whose errors are translated like `connect()`'s.

    Rule: the session is as `maker` makes it, with no transaction begun: `session.begin()`,
    `commit()` and autobegin behave as SQLAlchemy documents. For a maker bound to one
    `AsyncEngine`, the connection is checked out first (`connect()`) and the session bound to
    it; it goes back to the pool when the block ends. A maker bound otherwise checks out
    through the session, which then has begun its transaction."""
    bind = maker.kw.get("bind")
    if isinstance(bind, AsyncEngine):
        async with connect(bind) as connection, maker(bind=connection) as opened:
            yield opened
        return
    limit = call_timeout(margin=DEFAULT_MARGIN)  # no session without budget
    with _translated(DEFAULT_MARGIN):
        async with maker() as opened:
            try:
                async with asyncio.timeout(limit):
                    await opened.connection()  # check out now, within the budget
            except TimeoutError as exc:
                raise pool_exhausted(limit or 0.0, None) from exc
            yield opened


class _translated:  # noqa: N801 - a context manager used like a function
    """Translate driver errors raised inside the block into tether's."""

    def __init__(self, margin: float) -> None:
        self._margin = margin

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError | TetherError):
            # the driver's connect failed before SQLAlchemy could wrap it (TimeoutError is an
            # OSError too: our own PoolExhausted / DeadlineExceeded must pass unchanged)
            raise UpstreamUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        if not isinstance(exc, DBAPIError):
            return
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if code == QUERY_CANCELED:
            raise query_canceled(str(exc.orig), self._margin) from exc
        if exc.connection_invalidated:
            raise UpstreamUnavailable(f"lost the PostgreSQL connection: {exc.orig}") from exc
