#!/usr/bin/env bash
# Shared helpers for bottle's scripts. Source it; do not execute it.
#   step MSG...     announce a setup step (and time the previous one)
#   note MSG...     informational line
#   warn MSG...     warning on stderr
#   die MSG...      error on stderr, exit 1
#   find_python     print the command of a Python >= 3.12 interpreter
#   ensure_venv     create .venv (if needed) and pip install -e '.[test]'
# Variables: BOTTLE_ROOT (repo root), BOTTLE_CACHE (gitignored .cache/ dir).

if [[ -n "${_BOTTLE_COMMON_SH:-}" ]]; then return 0; fi
_BOTTLE_COMMON_SH=1

BOTTLE_ROOT="${BOTTLE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
BOTTLE_CACHE="${BOTTLE_CACHE:-$BOTTLE_ROOT/.cache}"
export BOTTLE_ROOT BOTTLE_CACHE
mkdir -p "$BOTTLE_CACHE"

_step_name=""
_step_start=0

# Print how long the current step took (called by step and at exit).
step_done() {
    if [[ -n "$_step_name" ]]; then
        printf '==> %s: done in %ss\n' "$_step_name" "$((SECONDS - _step_start))" >&2
        _step_name=""
    fi
}

step() {
    step_done
    _step_name="$*"
    _step_start=$SECONDS
    printf '\n==> %s\n' "$*" >&2
}

note() { printf '    %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# True when the interpreter given as words ("$@") is Python >= 3.12.
_python_ok() {
    "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

# Print a command (possibly "env PYENV_VERSION=X pythonX.Y") running Python >= 3.12.
# Honours BOTTLE_PYTHON if set.
find_python() {
    local cand ver
    if [[ -n "${BOTTLE_PYTHON:-}" ]]; then
        # shellcheck disable=SC2086  # BOTTLE_PYTHON may hold words
        if _python_ok $BOTTLE_PYTHON; then
            echo "$BOTTLE_PYTHON"
            return 0
        fi
        die "BOTTLE_PYTHON=$BOTTLE_PYTHON is not a Python >= 3.12"
    fi
    for cand in python3.13 python3.12 python3 python; do
        if command -v "$cand" >/dev/null 2>&1 && _python_ok "$cand"; then
            echo "$cand"
            return 0
        fi
    done
    # pyenv: installed but not selected versions (shims refuse unselected ones).
    if command -v pyenv >/dev/null 2>&1; then
        for ver in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.[0-9]+)?$' | sort -t. -k1,1n -k2,2nr -k3,3nr); do
            cand="$(pyenv root)/versions/$ver/bin/python3"
            if [[ -x "$cand" ]] && _python_ok "$cand"; then
                echo "$cand"
                return 0
            fi
        done
    fi
    die "no Python >= 3.12 found (set BOTTLE_PYTHON to one)"
}

# Create .venv with a Python >= 3.12 and install bottle with its test extras.
# Skips pip when pyproject.toml has not changed since the last install.
ensure_venv() {
    local venv="$BOTTLE_ROOT/.venv" py stamp want
    if [[ -x "$venv/bin/python" ]] && ! _python_ok "$venv/bin/python"; then
        note "existing .venv has Python < 3.12; recreating it"
        rm -rf "$venv"
    fi
    if [[ ! -x "$venv/bin/python" ]]; then
        py="$(find_python)"
        note "creating .venv with: $py"
        # shellcheck disable=SC2086
        $py -m venv "$venv" || die "could not create $venv with $py"
    fi
    stamp="$venv/.bottle-installed"
    want="$(sha256sum <"$BOTTLE_ROOT/pyproject.toml" | cut -d" " -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
        && "$venv/bin/python" -c 'import bottle, pytest' >/dev/null 2>&1; then
        note ".venv up to date ($("$venv/bin/python" --version))"
        return 0
    fi
    local log="$BOTTLE_CACHE/logs/pip-install.log"
    mkdir -p "$BOTTLE_CACHE/logs"
    note "pip install -e '.[test]' (log: ${log#"$BOTTLE_ROOT"/})"
    "$venv/bin/python" -m pip install --upgrade pip >"$log" 2>&1 \
        || warn "could not upgrade pip in .venv (continuing)"
    if ! "$venv/bin/python" -m pip install -e "$BOTTLE_ROOT[test]" >>"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "pip install -e '.[test]' failed (full log: $log)"
    fi
    echo "$want" >"$stamp"
    note ".venv ready ($("$venv/bin/python" --version))"
}
