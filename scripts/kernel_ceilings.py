"""The device's ceilings for the kernel benches' floors, measured in the same run: copy bandwidth
(bytes read + written) by several methods and the bf16 matmul rate, each the fastest of its
timed runs, the best method taken (a floor must not be lenient), beside the datasheet peaks.

Copy methods, 512 MiB of bf16 per array, 4 distinct arrays per timed program:
  jax_elementwise  XLA fusion a + 1            jax_copy     XLA copy of a (D2D memcpy)
  torch_copy       dst.copy_(src) (memcpy)     torch_add    torch.add(src, 1, out=dst)
Matmul: 8192^3 bf16 by XLA (jnp.dot) and by torch (cuBLAS). A method that fails (e.g. no torch)
is recorded as null with the reason.

Usage (GPU machine): PYTHONPATH=scripts:. python3 scripts/kernel_ceilings.py --out $OUT/ceilings.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.7")

import jax
import jax.numpy as jnp

from kernel_timing import jax_time_ms, torch_time_ms
from pallas_kernels.tile_tables import HOPPER_SPECS

# Dense bf16 tensor-core peak, FLOP/s (datasheet, without sparsity); bandwidth: HOPPER_SPECS.
MATMUL_PEAK = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12}
NSETS = 4


def datasheet(device_kind: str) -> dict:
    """Datasheet HBM bandwidth (B/s) and dense bf16 rate (FLOP/s) where known, else None."""
    spec = HOPPER_SPECS.get(device_kind)
    return dict(datasheet_copy_Bps=spec[1] * 1e12 if spec else None,
                datasheet_matmul_flops=MATMUL_PEAK.get(device_kind))


def _jax_methods(n, s, reps):
    out = {}
    xs = [(jax.random.normal(jax.random.key(i), (n,), jnp.bfloat16),) for i in range(NSETS)]
    out["jax_elementwise_copy_Bps"] = 4 * n / (jax_time_ms(lambda a: a + jnp.bfloat16(1), xs, reps, min) / 1e3)
    out["jax_copy_copy_Bps"] = 4 * n / (jax_time_ms(jnp.copy, xs, reps, min) / 1e3)
    del xs
    ms = [tuple(jax.random.normal(jax.random.key(10 + 2 * i + j), (s, s), jnp.bfloat16) for j in range(2))
          for i in range(NSETS)]
    out["jax_matmul_flops"] = 2 * s**3 / (jax_time_ms(jnp.dot, ms, reps, min) / 1e3)
    return out


def _torch_methods(n, s, reps):
    import torch
    out = {}
    src = [torch.randn(n, device="cuda", dtype=torch.bfloat16) for _ in range(NSETS)]
    dst = [torch.empty_like(a) for a in src]
    pairs = list(zip(src, dst))
    out["torch_copy_copy_Bps"] = 4 * n / (torch_time_ms(lambda a, b: b.copy_(a), pairs, reps, min) / 1e3)
    out["torch_add_copy_Bps"] = 4 * n / (torch_time_ms(lambda a, b: torch.add(a, 1, out=b), pairs, reps, min) / 1e3)
    del src, dst, pairs
    ab = [(torch.randn(s, s, device="cuda", dtype=torch.bfloat16),
           torch.randn(s, s, device="cuda", dtype=torch.bfloat16)) for _ in range(NSETS)]
    out["torch_matmul_flops"] = 2 * s**3 / (torch_time_ms(torch.matmul, ab, reps, min) / 1e3)
    del ab
    torch.cuda.empty_cache()
    return out


def ceilings(reps: int = 10, mib: int = 512, s: int = 8192) -> dict:
    """{method: figure} for every method, copy_Bps / matmul_flops = the best, copy_method /
    matmul_method naming it, the datasheet peaks and the measured / datasheet ratios."""
    n = mib * 2**20 // 2
    out = {}
    for family, measure in (("jax", _jax_methods), ("torch", _torch_methods)):
        try:
            out.update(measure(n, s, reps))
        except Exception as e:  # noqa: BLE001 - the other family's figures still stand
            traceback.print_exc()
            out[f"{family}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    for kind in ("copy_Bps", "matmul_flops"):
        figures = {k: v for k, v in out.items() if k.endswith("_" + kind) and v}
        if not figures:
            raise RuntimeError(f"no {kind} method ran: {out}")
        best = max(figures, key=figures.get)
        out[kind], out[kind.split("_")[0] + "_method"] = figures[best], best.removesuffix("_" + kind)
    device = jax.devices()[0].device_kind
    out.update(device=device, **datasheet(device))
    for kind in ("copy_Bps", "matmul_flops"):
        peak = out[f"datasheet_{kind}"]
        out[f"{kind}_over_datasheet"] = out[kind] / peak if peak else None
    return out


def summary(c: dict) -> str:
    """One line: the ceilings, their methods and the datasheet ratios."""
    def ratio(kind):
        r = c.get(f"{kind}_over_datasheet")
        return f"{r:.0%} of datasheet" if r else "datasheet unknown"
    copies = ", ".join(f"{k.removesuffix('_copy_Bps')} {v / 1e12:.2f}" for k, v in c.items()
                       if k.endswith("_copy_Bps") and not k.startswith("datasheet") and v) or "none listed"
    return (f"{c['device']}: copy {c['copy_Bps'] / 1e12:.3f} TB/s read+write ({c['copy_method']}; {ratio('copy_Bps')}; "
            f"methods TB/s: {copies}), bf16 matmul {c['matmul_flops'] / 1e12:.0f} TFLOP/s ({c['matmul_method']}; "
            f"{ratio('matmul_flops')})")


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
