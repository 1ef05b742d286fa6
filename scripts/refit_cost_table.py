"""Refit measured cost tables to their own calibration samples under the current cost model
(lp_jax.sim.refit: no device time), print each table's grid fit error before and after, and
write the refitted tables (in place with --write, else beside them as *.refit.json).

    .venv/bin/python scripts/refit_cost_table.py lp_jax/sim/tables/h200_qwen3-30b-a3b.json \
        lp_jax/sim/tables/h200_gpt-oss-20b.json --write
"""

import argparse
import json
import sys

import numpy as np

from lp_jax.sim.cost_model import CostTable
from lp_jax.sim.fit import errors
from lp_jax.sim.refit import refit


def _row(label: str, e: np.ndarray) -> str:
    a = np.abs(e)
    return (f"| {label} | {a.size} | {100 * np.median(a):.1f} % | {100 * np.percentile(a, 90):.1f} % | "
            f"{100 * a.max():.1f} % | {100 * np.median(e):+.1f} % |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="+", help="cost table files (measured, with samples)")
    ap.add_argument("--write", action="store_true", help="replace each table file by its refit")
    ap.add_argument("--residuals", action="store_true", help="also print every grid point's error before / after")
    args = ap.parse_args(argv)
    print("Grid fit error (|simulated / measured - 1| over the table's own iteration samples):\n")
    print("| table | points | median | p90 | max | median signed |")
    print("|---|---|---|---|---|---|")
    for path in args.tables:
        with open(path) as f:
            table = CostTable.from_json(json.load(f))
        if not table.samples:
            print(f"{path}: no samples to refit", file=sys.stderr)
            return 1
        new = refit(table)
        its_old = [s for s in table.samples if s["kind"] == "iteration"]
        its_new = [s for s in new.samples if s["kind"] == "iteration"]
        e_old, e_new = errors(table, its_old), errors(new, its_new)
        print(_row(f"{table.name}, before", e_old))
        print(_row(f"{table.name}, refitted", e_new))
        if args.residuals:
            for s, a, b in zip(its_old, e_old, e_new):
                print(f"    {s['case']:72s} {1e3 * s['seconds']:9.2f} ms  {100 * a:+6.1f} %  ->  {100 * b:+6.1f} %")
        dp = new.device_params
        print(f"    constants: " + ", ".join(f"{k} {v:.4g}" for k, v in vars(dp).items()))
        out = path if args.write else path.replace(".json", ".refit.json")
        new.save(out)
        print(f"    wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
