"""The asyncpg wrapper's statements: a statement with no budget left is never sent, and the
caller gets `DeadlineExceeded` (not an "upstream timed out" error)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tether import DeadlineExceeded, deadline_after
from tether.errors import UpstreamTimeout
from tether.postgres.asyncpg import Connection
from tether.testing import VirtualClock


class RecordingDriver:
    """Stands in for an asyncpg connection; records each statement it is asked to run.

    Its methods take asyncpg's per-statement `timeout=` (hence ASYNC109)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float | None]] = []

    async def _run(self, query: str, *args: Any, timeout: float | None = None) -> str:  # noqa: ASYNC109
        self.sent.append((query, timeout))
        return "OK"

    execute = fetch = fetchrow = fetchval = _run

    async def executemany(self, query: str, args: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.sent.append((query, timeout))


STATEMENTS = ["execute", "executemany", "fetch", "fetchrow", "fetchval"]


def call(connection: Connection, name: str, **kwargs: Any) -> Any:
    if name == "executemany":
        return connection.executemany("INSERT INTO t VALUES ($1)", [(1,)], **kwargs)
    return getattr(connection, name)("SELECT 1", **kwargs)


@pytest.mark.parametrize("name", STATEMENTS)
def test_a_statement_without_budget_is_not_sent(clock: VirtualClock, name: str) -> None:
    """5.5 ms left with a 5 ms margin: less than margin + 1 ms, so nothing is sent and the
    caller's own DeadlineExceeded comes back (this once came back as UpstreamTimeout "0.00 ms")."""
    driver = RecordingDriver()
    connection = Connection(driver, margin=0.005)

    async def main() -> None:
        async with deadline_after(1):
            clock.advance(1 - 0.0055)
            with pytest.raises(DeadlineExceeded) as caught:
                await call(connection, name)
            assert not isinstance(caught.value, UpstreamTimeout)
            assert "was not sent" in str(caught.value)

    clock.run(main())
    assert driver.sent == []


@pytest.mark.parametrize("name", STATEMENTS)
def test_an_explicit_timeout_is_capped_by_the_budget(clock: VirtualClock, name: str) -> None:
    """With budget left, the statement is sent with min(explicit, remaining - margin)."""
    driver = RecordingDriver()
    connection = Connection(driver, margin=0.005)

    async def main() -> None:
        async with deadline_after(0.5):
            await call(connection, name, timeout=2.0)

    clock.run(main())
    [(_, timeout)] = driver.sent
    assert timeout == pytest.approx(0.495)


def test_the_backstop_is_one_transaction_local_statement(clock: VirtualClock) -> None:
    """The backstop and the tag go in one statement (asyncpg under SQLAlchemy prepares every
    statement and refuses two commands in one), both local to the transaction; the tag's
    quotes are escaped; nothing without a deadline or a tag."""
    from tether.postgres._common import backstop_sql
    from tether.request_id import request_id_scope

    async def main() -> list[str | None]:
        made = [backstop_sql("svc")]
        with request_id_scope("it's-1"):
            made.append(backstop_sql("svc"))
            async with deadline_after(0.25):
                made.append(backstop_sql("svc"))
                made.append(backstop_sql(None))
        return made

    nothing, tag_only, both, budget_only = clock.run(main())
    assert nothing is None
    assert tag_only == "SELECT set_config('application_name', 'svc it''s-1', true)"
    assert both == (
        "SELECT set_config('statement_timeout', '250', true), "
        "set_config('application_name', 'svc it''s-1', true)"
    )
    assert budget_only == "SELECT set_config('statement_timeout', '250', true)"


class FakeTransaction:
    """Stands in for a driver's transaction context: records how it was left, and fails its
    BEGIN, COMMIT or ROLLBACK when told to."""

    def __init__(self, fail: str = "") -> None:
        self.fail = fail
        self.left: list[str] = []

    async def __aenter__(self) -> None:
        if self.fail == "begin":
            raise ConnectionResetError("begin failed")

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.left.append("commit" if exc_type is None else "rollback")
        if self.fail in ("commit", "rollback") and self.left[-1] == self.fail:
            raise ConnectionResetError(f"{self.fail} failed")


def as_lost(exc: BaseException) -> BaseException | None:
    return UpstreamTimeout(f"translated: {exc}") if isinstance(exc, ConnectionError) else None


@pytest.mark.parametrize("fail", ["begin", "commit"])
def test_a_failed_begin_or_commit_is_translated(clock: VirtualClock, fail: str) -> None:
    """The driver's failure of BEGIN or COMMIT reaches the caller as tether's error."""
    from tether.postgres._common import bounded_transaction

    async def main() -> None:
        with pytest.raises(UpstreamTimeout, match=f"{fail} failed"):
            async with deadline_after(1), bounded_transaction(FakeTransaction(fail), as_lost, 0):
                pass

    clock.run(main())


def test_the_blocks_error_wins_over_a_failed_rollback(clock: VirtualClock) -> None:
    """A ROLLBACK that fails after the block raised does not hide the block's error: it is
    raised, with the ROLLBACK's failure as its context."""
    from tether.postgres._common import bounded_transaction

    transaction = FakeTransaction("rollback")

    async def main() -> None:
        with pytest.raises(KeyError) as caught:
            async with bounded_transaction(transaction, as_lost, 0):
                raise KeyError("the block's own")
        assert isinstance(caught.value.__context__, ConnectionResetError)

    clock.run(main())
    assert transaction.left == ["rollback"]


def test_no_commit_once_the_budget_is_spent(clock: VirtualClock) -> None:
    """In a task that only inherited the deadline, a block that ends after the budget is
    rolled back, not committed: DeadlineExceeded (no work starts without budget)."""
    from tether.postgres._common import bounded_transaction

    transaction = FakeTransaction()

    async def work() -> None:
        async with bounded_transaction(transaction, as_lost, 0.005):
            clock.advance(1)  # the budget is spent inside the block, without an await

    async def main() -> None:
        async with deadline_after(0.5):
            child = asyncio.create_task(work())  # inherits the deadline; not cancelled by it
        with pytest.raises(DeadlineExceeded):
            await child

    clock.run(main())
    assert transaction.left == ["rollback"]
