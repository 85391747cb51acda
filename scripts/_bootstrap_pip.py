"""Install pip into a virtual environment made without it (`python -m venv --without-pip`).

Debian and Ubuntu leave out the part of Python that puts pip into a new virtual environment
(`ensurepip`; it comes with their python3-venv package), so on a fresh machine of theirs
`python3 -m venv` fails. scripts/_env.sh then makes the environment without pip and runs this
with the environment's own Python: it downloads pip's wheel from PyPI (the address and SHA-256
that PyPI's JSON API gives for the newest release), checks the digest, and lets that wheel
install itself. Standard library only; nothing else is trusted or needed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

RELEASE_INFO = "https://pypi.org/pypi/pip/json"


def newest_wheel() -> tuple[str, str, str]:
    """(file name, address, SHA-256) of the newest pip release's universal wheel."""
    with urllib.request.urlopen(RELEASE_INFO, timeout=60) as answer:
        release = json.load(answer)
        answered_from = answer.geturl()
    for file in release["urls"]:
        if file["packagetype"] == "bdist_wheel" and file["filename"].endswith("-none-any.whl"):
            # Mirrors and proxies may give the address relative to the JSON's own.
            url = urljoin(answered_from, file["url"])
            return file["filename"], url, file["digests"]["sha256"]
    raise SystemExit(f"no pip wheel listed at {RELEASE_INFO}")


def main() -> None:
    name, url, sha256 = newest_wheel()
    with tempfile.TemporaryDirectory() as folder:
        with urllib.request.urlopen(url, timeout=300) as answer:
            downloaded = answer.read()
        if hashlib.sha256(downloaded).hexdigest() != sha256:
            raise SystemExit(f"{name} from {url} does not match PyPI's SHA-256; not installed")
        wheel = Path(folder) / name
        wheel.write_bytes(downloaded)
        # A wheel is a zip archive Python can run from: pip installs its own wheel.
        subprocess.run(
            [sys.executable, f"{wheel}/pip", "install", "--quiet", "--no-index", str(wheel)],
            check=True,
        )


if __name__ == "__main__":
    main()
