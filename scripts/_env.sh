# Shared by scripts/*: find Python 3.11+, create .venv and install tether with the
# extras the caller names. Re-installs only when pyproject.toml changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

is_python_311_or_newer() {  # $1: a command name or path
    command -v "$1" >/dev/null 2>&1 \
        && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

find_python() {
    if [ -n "${PYTHON:-}" ]; then  # chosen by the caller: that one or none
        if is_python_311_or_newer "$PYTHON"; then
            echo "$PYTHON"; return 0
        fi
        echo "PYTHON=$PYTHON is not a Python 3.11 or newer that runs here" >&2
        return 1
    fi
    for candidate in python3.13 python3.12 python3.11 python3; do
        if is_python_311_or_newer "$candidate"; then
            echo "$candidate"; return 0
        fi
    done
    echo "tether needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    return 1
}

version_of() {  # $1: a python; prints its version, e.g. 3.12.1
    "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])'
}

make_venv() {  # $1: a python, $2: the folder
    if "$1" -m venv "$2" >/dev/null 2>&1; then
        return 0
    fi
    # Debian and Ubuntu ship ensurepip, which venv needs to put pip in, in a separate package
    # (python3-venv): without it, make the venv without pip, then install pip from PyPI.
    echo "$1 cannot put pip into a virtual environment; installing pip from PyPI" >&2
    rm -rf "$2"
    "$1" -m venv --without-pip "$2"
    "$2/bin/python" "$root/scripts/_bootstrap_pip.py"
}

ensure_venv() {  # $1: extras, e.g. "dev" or "dev,all"
    local extras="$1" venv="$root/.venv"
    local stamp="$venv/.tether-installed" want
    want="$extras $(cksum < pyproject.toml)"
    local python chosen
    if [ -n "${PYTHON:-}" ] && [ -x "$venv/bin/python" ]; then
        python="$(find_python)"
        chosen="$(version_of "$python")"
        if [ "$(version_of "$venv/bin/python")" != "$chosen" ]; then
            # PYTHON chooses the interpreter: a .venv made with another one is made again.
            echo "re-creating .venv with $python ($chosen)" >&2
            rm -rf "$venv"
        fi
    fi
    if [ ! -x "$venv/bin/python" ]; then
        python="$(find_python)"
        make_venv "$python" "$venv"
    fi
    if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
        echo "$want" > "$stamp"
    fi
    export PATH="$venv/bin:$PATH"
}
