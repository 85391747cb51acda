"""`tether demo` and the services it runs.

- `nested`: one request's budget flowing through nested calls, in one process.
- `inventory`: a grpc.aio service that queries PostgreSQL.
- `orders`: a FastAPI service that calls the inventory service.
- `chain`: starts PostgreSQL, both services and the gateway, with tether or without it.

Each service runs in both shapes: with tether (its one-line set-up) and "plain", the way a team
without it typically writes them (fixed timeouts of several seconds, nothing passed on, nothing
cancelled). The benchmark and the integration test compare the two.
"""

from __future__ import annotations

__all__ = ["run_demo"]


async def run_demo(budget: float, *, wait: bool) -> None:
    """The whole demo: nested calls in one process, then the chain across processes, both on
    one PostgreSQL (TETHER_PG_DSN, or an embedded one). `wait`: keep the chain up until
    Ctrl-C so the printed curl commands can be pasted."""
    from tether.demo.chain import show_chain
    from tether.demo.nested import run_nested
    from tether.postgres.embedded import postgres_dsn

    print("starting PostgreSQL (TETHER_PG_DSN, or an embedded one)...", flush=True)
    with postgres_dsn() as dsn:
        await run_nested(budget, dsn)
        await show_chain(dsn, wait=wait)
