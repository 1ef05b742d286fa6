#!/usr/bin/env bash
# Set up .venv (Python 3.12, jax 0.11.2) and run the CPU test suite. GPU tests skip without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two worker processes, each work unit (a test file, or files whose engines share shapes:
# tests/work_units.py) whole on one of them, so its module-level engines and caches serve all its
# tests; units are handed out longest first (that file's order), not by test count.
# LP_JAX_TEST_WORKERS=0 runs everything in this process.
exec .venv/bin/python -m pytest -q -n "${LP_JAX_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
