"""How scripts/check and scripts/demo choose their Python (scripts/_env.sh's `find_python`).

Only the choice is run here: making a virtual environment would replace the one these tests
run from.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "_env.sh"


def find_python(python: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    if python is not None:
        env["PYTHON"] = python
    return subprocess.run(
        ["bash", "-c", f'source "{ENV_SCRIPT}" && find_python'],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


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
    made = subprocess.run(
        ["bash", "-c", f'source "{ENV_SCRIPT}" && make_venv "{python}" "{venv}"'],
        capture_output=True,
        text=True,
        timeout=300,
    )
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
