"""What scripts/check and scripts/demo need from the machine: a Python 3.11+ (scripts/_env.sh),
pip in a new virtual environment, and an embedded PostgreSQL that starts for any user.

The Python is only chosen here, never used for `.venv/`: that would replace the environment
these tests run from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ENV_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "_env.sh"


def env_script(call: str, python: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `call` (a function of scripts/_env.sh, with its arguments) in bash, with PYTHON set
    to `python` (None: unset)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    if python is not None:
        env["PYTHON"] = python
    return subprocess.run(
        ["bash", "-c", f'source "{ENV_SCRIPT}" && {call}'],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def find_python(python: str | None) -> subprocess.CompletedProcess[str]:
    return env_script("find_python", python)


def test_without_python_set_a_python_311_or_newer_is_found() -> None:
    found = find_python(None)
    assert found.returncode == 0, found.stderr
    version = subprocess.run(
        [found.stdout.strip(), "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == "True"


def test_python_chooses_the_interpreter() -> None:
    found = find_python(sys.executable)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == sys.executable


@pytest.mark.parametrize("kind", ["missing", "too old", "not python"])
def test_a_python_that_cannot_be_used_is_refused_not_replaced(kind: str, tmp_path: Path) -> None:
    """PYTHON names one interpreter: when it cannot be used, the scripts stop and say so
    instead of quietly taking another one."""
    python = tmp_path / "python"
    if kind == "too old":  # answers the version check like Python 3.10 would
        python.write_text("#!/bin/sh\nexit 1\n")
        python.chmod(0o755)
    elif kind == "not python":
        python.write_text("not a program\n")
        python.chmod(0o644)
    found = find_python(str(python))
    assert found.returncode == 1
    assert found.stdout == ""
    assert f"PYTHON={python} is not a Python 3.11 or newer" in found.stderr


def test_without_ensurepip_the_venv_gets_pip_from_pypi(tmp_path: Path) -> None:
    """Debian's and Ubuntu's python3 without their python3-venv package cannot put pip into a
    new virtual environment: the scripts then make it without pip and install pip from PyPI
    (a real download, checked against PyPI's SHA-256)."""
    python = tmp_path / "python3"
    python.write_text(
        "#!/bin/sh\n"
        "# Like Debian's python3 without python3-venv: `-m venv` fails unless told --without-pip\n"
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ] && [ "$3" != "--without-pip" ]; then\n'
        '    echo "The virtual environment was not created: ensurepip is not available" >&2\n'
        "    exit 1\n"
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    python.chmod(0o755)
    venv = tmp_path / "venv"
    made = env_script(f'make_venv "{python}" "{venv}"')
    assert made.returncode == 0, made.stderr
    assert "installing pip from PyPI" in made.stderr
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert pip.stdout.startswith("pip ")
    assert str(venv) in pip.stdout  # pip lives in the new environment, not the test's


EMBEDDED_SELECT_1 = """
import asyncio, asyncpg
from tether.postgres.embedded import postgres_dsn

async def select_1(dsn):
    connection = await asyncpg.connect(dsn)
    try:
        print(await connection.fetchval("SELECT 1"))
    finally:
        await connection.close()

with postgres_dsn() as dsn:
    asyncio.run(select_1(dsn))
"""


def embedded_select_1(
    temporary: str, runtime: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`SELECT 1` on an embedded server started by a new process with `temporary` as its
    temporary folder and `runtime` as XDG_RUNTIME_DIR (None: unset, as on servers and in CI)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("XDG_RUNTIME_DIR", "TETHER_PG_DSN")
    }
    env["TMPDIR"] = temporary
    if runtime is not None:
        env["XDG_RUNTIME_DIR"] = runtime
    return subprocess.run(
        [sys.executable, "-c", EMBEDDED_SELECT_1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("runtime_folder", ["none", "the user's own"])
def test_the_embedded_server_does_not_need_the_shared_temporary_lock_file(
    runtime_folder: str,
) -> None:
    """The embedded server's package would lock `<tmp>/.lockfile`, which belongs to whoever used
    it first, unless its own folder in the runtime folder already exists: with no runtime
    folder (servers, CI) and with a desktop's. Here that file cannot be opened at all (a folder
    stands in its place, as another user's file would for us): the server still starts, its
    lock in `<tmp>/tether-<uid>`, a folder only this user can enter."""
    temporary = tempfile.mkdtemp(prefix="tpg")  # short: the server's socket lives below it
    try:
        (Path(temporary) / ".lockfile").mkdir()
        runtime = None
        if runtime_folder == "the user's own":  # as XDG requires: owned, mode 0700
            runtime = os.path.join(temporary, "run")
            os.mkdir(runtime, 0o700)
        ran = embedded_select_1(temporary, runtime)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert ran.stdout.strip() == "1"
        own = Path(temporary) / f"tether-{os.getuid()}"
        assert (own / "python_PostgresServer" / ".lockfile").exists()
        assert own.stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


@pytest.mark.parametrize("planted", ["a symbolic link", "another user's folder"])
def test_a_lock_folder_that_is_not_this_users_own_is_refused(planted: str) -> None:
    """`<tmp>/tether-<uid>` is trusted only if it is this user's own folder: one planted there
    is refused with a message saying what to do."""
    temporary = tempfile.mkdtemp(prefix="tpg")
    try:
        own = Path(temporary) / f"tether-{os.getuid()}"
        if planted == "a symbolic link":
            (Path(temporary) / "elsewhere").mkdir()
            own.symlink_to(Path(temporary) / "elsewhere")
        else:
            if os.getuid() != 0:
                pytest.skip("only root can make a folder that belongs to another user")
            own.mkdir()
            os.chown(own, 12345, 12345)
        ran = embedded_select_1(temporary)
        assert ran.returncode == 1
        assert "is not a folder of this user's own" in ran.stderr
        assert "TETHER_PG_DSN" in ran.stderr
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
