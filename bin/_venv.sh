# Sourced by bin/demo and bin/test: make sure .venv exists and holds hangw with its extras.
# Re-installs only when setup.cfg or pyproject.toml changed since the last install.
hangw_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
hangw_venv="$hangw_root/.venv"
hangw_ensure_venv() {
    local extras=$1
    local python=${HANGW_PYTHON:-}
    if [ -z "$python" ]; then
        for candidate in python3.11 python3.12 python3.13 python3; do
            if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
        done
    fi
    if [ ! -x "$hangw_venv/bin/python" ]; then
        echo "hangw: creating a virtual environment in $hangw_venv (first use only)" >&2
        "$python" -m venv "$hangw_venv"
    fi
    local stamp="$hangw_venv/.hangw-installed-$extras"
    local want
    want=$(cat "$hangw_root/setup.cfg" "$hangw_root/pyproject.toml" | sha256sum | cut -c1-16)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "hangw: installing hangw and its dependencies into .venv (this takes a minute the first time)" >&2
        "$hangw_venv/bin/python" -m pip install -q --upgrade pip wheel setuptools >&2
        "$hangw_venv/bin/python" -m pip install -q -e "$hangw_root[$extras]" >&2
        echo "$want" > "$stamp"
    fi
}
