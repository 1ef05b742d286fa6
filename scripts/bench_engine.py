"""Engine benchmark (issue 6): iterations of the whole model against their hardware floors; the
cases, floors and report are in `lp_jax.bench.engine_bench` (see its docstring, or --help).

    PYTHONPATH=. XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python3 scripts/bench_engine.py --model qwen3-30b-a3b --out-dir DIR
    .venv/bin/python scripts/bench_engine.py --model tiny-qwen3-moe --out-dir /tmp/bench   # CPU smoke test
"""

import sys

from lp_jax.bench.engine_bench import main

if __name__ == "__main__":
    sys.exit(main())
