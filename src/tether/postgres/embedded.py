"""A PostgreSQL for tests and the demo: the one in `TETHER_PG_DSN`, or an embedded one.

`TETHER_PG_DSN` (for example `postgresql://postgres@127.0.0.1:5432/postgres`) points tether's
tests, benchmarks and demo at an existing server. Without it they start a throwaway PostgreSQL
from the `pgserver` package (real PostgreSQL binaries from PyPI; about half a second to start),
in a temporary folder that is removed afterwards.
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
            import pgserver
        except ImportError as exc:  # pragma: no cover - the dev extra installs it
            raise RuntimeError(
                f"no PostgreSQL: set {DSN_VARIABLE} or install the pgserver package"
            ) from exc
        folder = tempfile.mkdtemp(prefix="tether-pg-")
        server = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
