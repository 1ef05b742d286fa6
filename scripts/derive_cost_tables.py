"""Write the simulator's cost tables that need no device: the H100 tables of qwen3-30b-a3b and
gpt-oss-20b derived from the committed H100 results, and the datasheet tables (H200, B200) built
on them (lp_jax/sim/from_results.py says how).

    .venv/bin/python scripts/derive_cost_tables.py
"""

from __future__ import annotations

import json
import sys

from lp_jax.sim.cost_model import CostTable
from lp_jax.sim.from_results import write_h100_tables


def main() -> int:
    for path in write_h100_tables():
        with open(path) as f:
            table = CostTable.from_json(json.load(f))
        fit = table.fit.get("iteration")
        err = (f"fit on {fit['samples']} engine cases: median |error| {100 * fit['median_abs_rel_err']:.1f} %, "
               f"max {100 * fit['max_abs_rel_err']:.1f} %") if fit else "no fit (datasheet)"
        print(f"wrote {path}: {table.label}; {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
