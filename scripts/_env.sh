# Shared by scripts/*: find Python 3.11+, create .venv and install tether with the
# extras the caller names. Re-installs only when pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

find_python() {
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "tether needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    return 1
}

ensure_venv() {  # $1: extras, e.g. "dev" or "dev,all"
    local extras="$1" venv="$root/.venv"
    local stamp="$venv/.tether-installed" want
    want="$extras $(cksum < pyproject.toml)"
    if [ ! -x "$venv/bin/python" ]; then
        "$(find_python)" -m venv "$venv"
    fi
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
        echo "$want" > "$stamp"
    fi
    export PATH="$venv/bin:$PATH"
}
