"""All-reduce cost over every device JAX sees (the simulator's collective term under --tp/--ep):
a ladder of psum sizes timed, latency and bus bandwidth fitted, written as JSON with the device.

    PYTHONPATH=. python3 scripts/measure_collectives.py --out results/collectives.json \
        --add-to-table lp_jax/sim/tables/h200_qwen3-30b-a3b.json

--add-to-table writes the fit into simulator cost tables (their `all_reduce`), which a split
(tp x ep > 1) simulated engine needs; give tables of this device kind.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import jax

from lp_jax.parallel.collectives import DEFAULT_SIZES, time_all_reduce


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--reps", type=int, default=20, help="timed calls per size (median kept)")
    ap.add_argument("--add-to-table", action="append", default=[], metavar="TABLE.json",
                    help="a simulator cost table of this device kind to store the fit in (repeat for several)")
    args = ap.parse_args()
    kind = jax.devices()[0].device_kind
    for path in args.add_to_table:  # checked before the measurement takes its minutes
        with open(path) as f:
            if json.load(f).get("device_kind") != kind:
                raise SystemExit(f"error: {path} is not a table of {kind}")
    cost = time_all_reduce(sizes=DEFAULT_SIZES, reps=args.reps)
    result = dict(cost.to_json(), device=kind, processes=jax.process_count(),
                  date=datetime.date.today().isoformat())
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"all-reduce over {cost.devices} x {result['device']}: latency {cost.latency_s * 1e6:.3g} us, bus bandwidth "
          f"{cost.bus_Bps / 1e9:.3g} GB/s (fit over {len(cost.samples)} sizes, "
          f"{DEFAULT_SIZES[0]} B .. {DEFAULT_SIZES[-1] >> 20} MiB); wrote {args.out}")
    for path in args.add_to_table:
        with open(path) as f:
            table = json.load(f)
        table["all_reduce"] = dict(cost.to_json(), source=f"scripts/measure_collectives.py, {result['date']}")
        with open(path, "w") as f:
            json.dump(table, f, indent=1)
            f.write("\n")
        print(f"stored in {path}")


if __name__ == "__main__":
    main()
