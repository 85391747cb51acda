"""The package itself: importable without any optional extra, typed, with a console script."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path

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


def test_the_readme_starts_with_the_two_commands() -> None:
    """README.md (which the package build also needs) opens with the demo and the test suite
    commands, and both scripts are there to run."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert first_block is not None
    assert readme.index("```sh") < readme.index("\n## ")
    commands = [line.split()[0] for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["scripts/demo", "scripts/check"]
    for command in commands:
        assert (root / command).is_file()


def test_new_request_ids_are_distinct_uuid4s_and_differ_across_a_fork() -> None:
    """Generated ids are canonical UUID4 text, never repeat in a process, and a forked child
    does not continue its parent's sequence."""
    import uuid

    from tether.request_id import new_request_id

    ids = [new_request_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:200]:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)
    # Forked from a fresh interpreter: forking the test process itself (which has threads)
    # is deprecated on newer Pythons.
    script = (
        "import os; from tether.request_id import new_request_id as n\n"
        "r, w = os.pipe(); pid = os.fork()\n"
        "if pid == 0: os.write(w, n().encode()); os._exit(0)\n"
        "os.waitpid(pid, 0); print(os.read(r, 100).decode(), n())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    child, parent = out.stdout.split()
    assert uuid.UUID(child).version == 4
    assert child[:23] != parent[:23]  # a new random prefix in the child
