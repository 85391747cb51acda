"""What is running on a PostgreSQL server right now, with the request each statement serves.

`tether pg activity --older-than 500ms` is the check a DBA runs after an incident (or a test
runs after a deadline): statements running longer than a threshold, with the request id tether
put in `application_name`.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from tether.errors import UpstreamUnavailable

_QUERY = """
SELECT pid,
       EXTRACT(EPOCH FROM clock_timestamp() - query_start) AS running,
       state,
       application_name,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 200) AS query
FROM pg_stat_activity
WHERE state <> 'idle'
  AND query_start IS NOT NULL
  AND pid <> pg_backend_pid()
  AND clock_timestamp() - query_start > make_interval(secs => $1)
ORDER BY running DESC
"""


@dataclass(frozen=True, slots=True)
class Statement:
    pid: int
    running: float  # seconds
    state: str
    application_name: str
    query: str

    @property
    def request_id(self) -> str | None:
        """The request id tether tagged the connection with (`<prefix> <request id>`)."""
        prefix, _, request_id = self.application_name.partition(" ")
        return request_id or None if prefix else None


async def long_running(dsn: str, older_than: float) -> list[Statement]:
    """Statements (not idle) that have run for more than `older_than` seconds."""
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        rows = await conn.fetch(_QUERY, older_than)
    finally:
        await conn.close()
    return [
        Statement(
            r["pid"], float(r["running"]), r["state"], r["application_name"] or "", r["query"] or ""
        )
        for r in rows
    ]


def format_table(statements: list[Statement]) -> str:
    if not statements:
        return "no statements running longer than the threshold"
    lines = [f"{'pid':>7}  {'running':>10}  {'state':<20}  {'request id':<38}  query"]
    for s in statements:
        lines.append(
            f"{s.pid:>7}  {s.running * 1000:>8.0f}ms  {s.state:<20}  "
            f"{(s.request_id or '-'):<38}  {s.query}"
        )
    return "\n".join(lines)
