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
