"""The package itself: importable without any optional extra, typed, with a console script."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata, resources

HEAVY = (
    "aiohttp",
    "grpc",
    "asyncpg",
    "psycopg",
    "sqlalchemy",
    "uvloop",
    "httptools",
    "yaml",
    "anyio",
)


def test_import_tether_loads_no_optional_dependency() -> None:
    """`import tether` (and its testing helpers) pulls in none of the extras, nor anyio."""
    code = (
        "import sys, tether, tether.wire, tether.problems, tether.statuses, tether.testing\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_package_is_typed_and_has_a_console_script() -> None:
    """py.typed ships, and `tether` is installed as a command."""
    assert resources.files("tether").joinpath("py.typed").is_file()
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("tether") == "tether.cli:main"


def test_extras_are_declared() -> None:
    """The integrations' dependencies are optional extras, with [all] naming them all."""
    extras = set(metadata.metadata("tether").get_all("Provides-Extra") or [])
    assert {"http", "grpc", "postgres", "gateway", "all"} <= extras
