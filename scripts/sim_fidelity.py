"""Fidelity of the simulator on this machine, one command: calibrate, serve held-out workloads for
real and simulated, compare (lp_jax/fidelity.py says what exactly), repeat.

    .venv/bin/python scripts/sim_fidelity.py                     # 3 repeats, ~6 minutes on 2 cores
    .venv/bin/python scripts/sim_fidelity.py --repeats 1 --quick-grid --out /tmp/fid

Writes fidelity.json, fidelity.md, per_iteration_error.png and each repeat's cost table into --out
(default docs/fidelity/), and prints the tables docs/simulator.md quotes.
"""

from __future__ import annotations

import argparse
import os
import sys

from lp_jax.bench.fidelity import FidelitySpec, histogram, markdown, run_fidelity


def main(argv=None) -> int:
    d = FidelitySpec()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=d.model)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--rates", default=",".join(f"{r:g}" for r in d.rates), help="requests/s, comma-separated")
    p.add_argument("--num-requests", type=int, default=d.num_requests)
    p.add_argument("--quick-grid", action="store_true", help="coarser calibration grid")
    p.add_argument("--out", default=os.path.join("docs", "fidelity"))
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    spec = FidelitySpec(model=args.model, repeats=args.repeats, rates=tuple(float(r) for r in args.rates.split(",")),
                        num_requests=args.num_requests, quick_grid=args.quick_grid)
    result = run_fidelity(spec, args.out, progress=args.progress)
    text = markdown(result)
    with open(os.path.join(args.out, "fidelity.md"), "w") as f:
        f.write(text)
    print(text)
    print("wrote", histogram(result, os.path.join(args.out, "per_iteration_error.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
