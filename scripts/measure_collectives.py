"""All-reduce cost over every device JAX sees (the simulator's collective term under --tp/--ep):
a ladder of psum sizes timed, latency and bus bandwidth fitted, written as JSON with the device.

    PYTHONPATH=. python3 scripts/measure_collectives.py --out results/collectives.json
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
    args = ap.parse_args()
    cost = time_all_reduce(sizes=DEFAULT_SIZES, reps=args.reps)
    result = dict(device=jax.devices()[0].device_kind, devices=jax.device_count(), processes=jax.process_count(),
                  date=datetime.date.today().isoformat(), **cost.to_json())
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"all-reduce over {cost.devices} x {result['device']}: latency {cost.latency_s * 1e6:.1f} us, bus bandwidth "
          f"{cost.bus_Bps / 1e9:.1f} GB/s (fit over {len(cost.samples)} sizes, "
          f"{DEFAULT_SIZES[0]} B .. {DEFAULT_SIZES[-1] >> 20} MiB); wrote {args.out}")


if __name__ == "__main__":
    main()
