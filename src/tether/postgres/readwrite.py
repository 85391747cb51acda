"""Read/write split: writes to the primary under a strict budget, never retried; reads to a
replica under their own budget, with an optional fallback when the replica is too slow.

    split = ReadWriteSplit(primary, replica, write_budget=3, read_budget=0.2)

    async with split.write() as conn:                  # a transaction on the primary
        await conn.execute("UPDATE orders SET ...")

    rows = await split.read("SELECT ...", fallback=cache_lookup)

Rules:
- A write runs once: tether never retries it (a retried write can apply twice).
- Both budgets only narrow the caller's: `read_budget=0.2` inside a request with 50 ms left
  gives 50 ms.
- The fallback runs when the replica ran out of *its* budget or could not be reached while the
  caller still has time; when the caller's own budget is spent, the error propagates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from tether._settings import positive_seconds
from tether.deadline import current_deadline, deadline_after
from tether.errors import DeadlineExceeded, UpstreamUnavailable
from tether.postgres.asyncpg import Connection, Pool

__all__ = ["ReadWriteSplit"]

_T = TypeVar("_T")


class ReadWriteSplit:
    """A primary for writes and (optionally) a replica for reads, each with its budget."""

    def __init__(
        self,
        primary: Pool,
        replica: Pool | None = None,
        *,
        write_budget: float,
        read_budget: float,
    ) -> None:
        self.primary = primary
        self.replica = replica if replica is not None else primary
        self.write_budget = positive_seconds("write_budget", write_budget)
        self.read_budget = positive_seconds("read_budget", read_budget)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        """A transaction on the primary under the write budget (never retried)."""
        async with (
            deadline_after(self.write_budget),
            self.primary.acquire() as conn,
            conn.transaction(),
        ):
            yield conn

    async def read(
        self,
        query: str,
        *args: Any,
        fallback: Callable[[], Awaitable[_T]] | None = None,
    ) -> list[Any] | _T:
        """Rows from the replica under the read budget, or the fallback's answer."""
        block = deadline_after(self.read_budget)
        try:
            async with block:
                return await self.replica.fetch(query, *args)
        except DeadlineExceeded:
            # The read's own budget binds only if it did not inherit the caller's (earlier)
            # deadline; when the caller's budget is what ran out there is no time for a fallback.
            if fallback is None or block.inherited:
                raise
            return await fallback()
        except UpstreamUnavailable:
            caller = current_deadline()
            if fallback is None or (caller is not None and caller.expired):
                raise
            return await fallback()
