"""tether for PostgreSQL: the remaining budget becomes each statement's limit, and the server
really stops the statement when the budget runs out.

- `create_pool` / `Pool` / `Connection`: asyncpg, the primary driver (the `postgres` extra).
- `tether.postgres.sqlalchemy`: SQLAlchemy 2 asyncio engines (the `sqlalchemy` extra).
- `tether.postgres.psycopg`: psycopg 3 async (the `psycopg` extra).
- `ReadWriteSplit`: writes to the primary, reads to a replica with a fallback.
- `tether pg activity`: what is running on the server, with request ids.
"""

from tether.postgres._common import PoolExhausted
from tether.postgres.asyncpg import Connection, Pool, PoolClosed, create_pool

__all__ = ["Connection", "Pool", "PoolClosed", "PoolExhausted", "create_pool"]
