"""The device's ceilings for the kernel benches' floors, measured in the same run: an entry point
into `lp_jax.bench.ceilings`, the one implementation (copy bandwidth, bytes read + written, as
the best of XLA elementwise, XLA copy, torch copy_ and torch add; the bf16 matmul rate as the
best of XLA and torch; each the fastest of its timed runs; beside the datasheet peaks).

Usage (GPU machine): PYTHONPATH=scripts:. python3 scripts/kernel_ceilings.py --out $OUT/ceilings.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# JAX takes this share of the GPU when its backend starts; the rest is room for torch's methods.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.7")

from lp_jax.bench import ceilings as _ceilings  # noqa: E402 - after the memory fraction is set
from lp_jax.bench.ceilings import datasheet, summary  # noqa: E402,F401 - what the kernel benches import


def ceilings(reps: int = 10, mib: int = 512, s: int = 8192) -> dict:
    """`lp_jax.bench.ceilings.ceilings` at the kernel benches' sizes: 512 MiB arrays, 8192^3 matmul."""
    return _ceilings.ceilings(mib, s, reps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the figures to this JSON file")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    c = ceilings(args.reps)
    print(summary(c), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(c, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
