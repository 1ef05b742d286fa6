#!/usr/bin/env bash
# Set up .venv (Python 3.12, jax 0.11.2) and run the CPU test suite. GPU tests skip without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
