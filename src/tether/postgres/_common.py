"""What every PostgreSQL integration shares: error translation, the backstop, the tag.

Rules:
1. Our budget running out is `DeadlineExceeded`. Waiting for a pool connection until the budget
   ran out is `PoolExhausted` (a `DeadlineExceeded`): the pool-exhaustion symptom.
2. SQLSTATE 57014 (query_canceled) is ours when our budget is spent (tether's own
   `statement_timeout` backstop fired, or tether cancelled the statement), and the server's
   otherwise (a `statement_timeout` a DBA set on the role or database): `UpstreamTimeout`.
3. Inside a transaction, tether sets `statement_timeout` to the remaining budget with
   `SET LOCAL`: the server ends the statement even when the client is gone (killed, network
   cut). It bounds each statement by the budget left when the transaction began.
4. Each connection carries the request id in `application_name` (`<prefix> <request id>`), so a
   row of `pg_stat_activity` leads back to a request; never an earlier request's id.
5. A transaction's COMMIT is work like a statement: bounded by the budget, its failures
   translated (see `bounded_transaction`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn

from tether.deadline import current_deadline, deadline_enforced_here
from tether.errors import DeadlineExceeded, TetherError, UpstreamTimeout, format_seconds
from tether.request_id import current_request_id
from tether.wire import call_timeout

QUERY_CANCELED = "57014"
# Seconds a connection may take to finish a cancellation and reset when it goes back to the pool.
RELEASE_TIMEOUT = 5.0
APPLICATION_NAME_LIMIT = 63  # NAMEDATALEN - 1


class PoolExhausted(DeadlineExceeded):
    """The budget ran out while waiting for a free pool connection."""


def budget_spent(margin: float) -> bool:
    """True when the ambient budget has (about) run out: less than `margin` is left."""
    deadline = current_deadline()
    return deadline is not None and deadline.remaining() <= margin


def query_canceled(detail: str, margin: float) -> Exception:
    """The error for SQLSTATE 57014: ours when the budget is spent, the server's otherwise."""
    if budget_spent(margin):
        return DeadlineExceeded(
            f"deadline exceeded: PostgreSQL cancelled the statement as the budget ran out "
            f"({detail})",
            deadline=current_deadline(),
        )
    return UpstreamTimeout(
        f"PostgreSQL cancelled the statement on its own (a statement_timeout set on the server, "
        f"role or database, not tether's budget): {detail}"
    )


def statement_timed_out(limit: float, budget_bound: bool) -> Exception:
    """The error when the driver's own per-statement timeout ran out."""
    if budget_bound:
        return DeadlineExceeded(
            f"deadline exceeded: the statement did not finish within the "
            f"{format_seconds(limit)} left of the budget; it was cancelled on the server",
            deadline=current_deadline(),
        )
    return UpstreamTimeout(f"the statement did not finish within its {format_seconds(limit)}")


def pool_exhausted(waited: float, size: int | None) -> PoolExhausted:
    of = f" (all {size} connections busy)" if size else ""
    return PoolExhausted(
        f"deadline exceeded: no pool connection became free within the "
        f"{format_seconds(waited)} left of the budget{of}: the pool is exhausted",
        deadline=current_deadline(),
    )


def backstop_sql(prefix: str | None) -> str | None:
    """One statement that sets, for the current transaction only (`set_config(..., true)`, as
    `SET LOCAL`), `statement_timeout` to the remaining budget and `application_name` to the
    request tag; None when there is no deadline and no tag to set.

    One statement, not two `SET LOCAL`s: drivers that prepare every statement (asyncpg under
    SQLAlchemy) refuse several commands in one. Transaction-local: a session-wide tag would
    outlive a committed transaction, and the connection's later work without a request id (a
    background job's) would show this request's id in `pg_stat_activity`."""
    settings = []
    deadline = current_deadline()
    if deadline is not None:
        settings.append(("statement_timeout", str(max(1, math.ceil(deadline.remaining() * 1000)))))
    tag = application_name(prefix)
    if tag is not None:
        settings.append(("application_name", tag))
    if not settings:
        return None
    return "SELECT " + ", ".join(
        f"set_config('{name}', {quote_literal(value)}, true)" for name, value in settings
    )


def application_name(prefix: str | None) -> str | None:
    """`<prefix> <request id>` (cut to PostgreSQL's 63 bytes), or None without either."""
    request_id = current_request_id()
    if prefix is None or request_id is None:
        return None
    return f"{prefix} {request_id}".encode()[:APPLICATION_NAME_LIMIT].decode("utf-8", "ignore")


def quote_literal(text: str) -> str:
    """A PostgreSQL string literal (standard_conforming_strings is on since 9.1)."""
    return "'" + text.replace("'", "''") + "'"


# Turns a driver's failure into tether's error; None: the failure stays as it is.
Translate = Callable[[BaseException], BaseException | None]


@asynccontextmanager
async def bounded_transaction(
    transaction: AbstractAsyncContextManager[Any], translate: Translate, margin: float
) -> AsyncIterator[None]:
    """The driver's own `transaction` (its BEGIN, then its COMMIT or ROLLBACK) under tether's
    rules for statements.

    - The COMMIT is bounded by the budget. In a task that only inherited the deadline (nothing
      cancels it there), it runs under `remaining - margin`; PostgreSQL's `statement_timeout`
      backstop does not reach the work a COMMIT does (deferred triggers, say). A COMMIT cut
      short is `DeadlineExceeded`, and, as with a connection lost while committing, whether it
      took effect is unknown to the caller.
    - Failures of BEGIN, COMMIT and ROLLBACK are translated like a statement's: a cancellation
      (SQLSTATE 57014) that lands on them is `DeadlineExceeded` or `UpstreamTimeout`, not the
      driver's own error.
    - An error the block raised wins over a failed ROLLBACK's (which is its context).
    """
    try:
        await transaction.__aenter__()
    except BaseException as exc:
        _raise_translated(exc, translate)
    try:
        yield
    except GeneratorExit:  # abandoned, never properly left: nothing may be awaited now
        raise
    except BaseException as failure:
        await _roll_back_for(transaction, failure)
        raise
    try:
        limit = None if deadline_enforced_here() else call_timeout(margin=margin)
    except DeadlineExceeded as spent:  # no budget left to commit in: the work is undone
        await _roll_back_for(transaction, spent)
        raise
    try:
        async with asyncio.timeout(limit):
            await transaction.__aexit__(None, None, None)
    except TimeoutError as exc:
        if isinstance(exc, TetherError):
            raise
        raise statement_timed_out(limit or 0.0, budget_bound=True) from exc
    except BaseException as exc:
        _raise_translated(exc, translate)


async def _roll_back_for(
    transaction: AbstractAsyncContextManager[Any], failure: BaseException
) -> None:
    """Leave `transaction` because of `failure` (its ROLLBACK); a failed ROLLBACK does not
    replace `failure`, which is raised with it as its context."""
    try:
        await transaction.__aexit__(type(failure), failure, failure.__traceback__)
    except BaseException as cleanup:
        if cleanup is not failure:
            raise failure  # noqa: B904 - the failed ROLLBACK becomes its context
        raise


def _raise_translated(exc: BaseException, translate: Translate) -> NoReturn:
    if not isinstance(exc, TetherError):
        translated = translate(exc)
        if translated is not None:
            raise translated from exc
    raise exc
