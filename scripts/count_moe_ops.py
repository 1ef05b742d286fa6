"""Count the XLA operations of one MoE layer call, grouped layer (moe.py) against the decode-size
layer (moe_decode.py), from the compiled HLO on the CPU (no GPU needed).

Each of the two Pallas kernels is replaced by a stand-in of the same output shape (a host
callback: one custom-call, as the Mosaic kernel is one custom-call on the GPU), so what is counted
is the XLA work around the kernels; `lp_jax.bench.hlo.entry_ops` counts the ENTRY computation's
operations (fusions, custom-calls, sorts, scatters...; parameters, tuples, bitcasts left out).
XLA's CPU compiler fuses a little differently from its GPU compiler, so the counts estimate the
GPU's kernel launches per layer call; the CUDA build's HLO needs the GPU machine.

Usage: python3 scripts/count_moe_ops.py [--tokens 1,8,16,32,64] [--out benchmarks/results/moe_decode_ops_cpu]
Writes <out>.json (rows: model, tokens, path, ops by opcode, total) and <out>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lp_jax.bench.hlo import entry_ops
from pallas_kernels import moe, moe_decode
from pallas_kernels.grouped_matmul import grouped_matmul

MODELS = {  # name: E, top-k, D, F, activation, biases (as scripts/bench_moe.py)
    "qwen3_30b_a3b": (128, 8, 2048, 768, "swiglu", False),
    "gpt_oss_20b": (32, 4, 2880, 2880, "clamped_swiglu", True),
}
PATHS = {"grouped": moe.moe_experts_pallas, "decode": moe_decode.moe_experts_decode}


def kernel_stand_in(*args, **kwargs):
    """A host callback shaped like `grouped_matmul(*args, **kwargs)`'s output: one custom-call that
    XLA cannot fuse into or fold, as the Mosaic kernel on the GPU."""
    out = jax.eval_shape(functools.partial(grouped_matmul, **kwargs), *args)
    flat = [a for a in jax.tree.leaves((args, kwargs)) if isinstance(a, jax.Array)]
    return jax.pure_callback(lambda *_: np.zeros(out.shape, out.dtype), out, *flat)


@contextlib.contextmanager
def kernels_stood_in():
    saved = moe.grouped_matmul, moe_decode.grouped_matmul
    moe.grouped_matmul = moe_decode.grouped_matmul = kernel_stand_in
    try:
        yield
    finally:
        moe.grouped_matmul, moe_decode.grouped_matmul = saved


def layer_ops(path: str, E: int, K: int, D: int, F: int, activation: str, bias: bool, T: int) -> dict[str, int]:
    """entry_ops of one jitted layer call of T tokens (padding mask given, as the engine passes)."""
    spec = jax.ShapeDtypeStruct
    experts = {"w_gate": spec((E, D, F), jnp.bfloat16), "w_up": spec((E, D, F), jnp.bfloat16),
               "w_down": spec((E, F, D), jnp.bfloat16)}
    if bias:
        experts |= {"b_gate": spec((E, F), jnp.bfloat16), "b_up": spec((E, F), jnp.bfloat16),
                    "b_down": spec((E, D), jnp.bfloat16)}
    fn = jax.jit(lambda x, w, ids, valid, ex: PATHS[path](x, w, ids, ex, activation=activation, valid_T=valid))
    with kernels_stood_in():
        lowered = fn.lower(spec((T, D), jnp.bfloat16), spec((T, K), jnp.float32), spec((T, K), jnp.int32),
                           spec((T,), jnp.bool_), experts)
    return entry_ops(lowered.compile().as_text())


def markdown(rows) -> str:
    lines = ["# XLA operations per MoE layer call (compiled HLO on the CPU, kernels as stand-ins)", "",
             "Operations of the ENTRY computation (each a kernel launch on a GPU), the two Pallas "
             "kernels counted as 2 custom-calls. grouped = moe.py (tile-padded rows), decode = "
             "moe_decode.py (opt-in, up to 64 tokens). CPU fusion: an estimate of the GPU's count.", "",
             "| model | tokens | grouped ops | decode ops | grouped by opcode | decode by opcode |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    by = {(r["model"], r["tokens"], r["path"]): r for r in rows}
    for (model, T, path), r in by.items():
        if path != "grouped" or (model, T, "decode") not in by:
            continue
        d = by[(model, T, "decode")]
        fmt = lambda ops: ", ".join(f"{k} {v}" for k, v in sorted(ops.items()))  # noqa: E731
        lines.append(f"| {model} | {T} | {r['total']} | {d['total']} | {fmt(r['ops'])} | {fmt(d['ops'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="1,8,16,32,64")
    ap.add_argument("--out", default="benchmarks/results/moe_decode_ops_cpu")
    args = ap.parse_args(argv)
    try:
        tokens = [int(t) for t in args.tokens.split(",") if t]
    except ValueError:
        ap.error(f"--tokens: comma-separated integers, got {args.tokens!r}")
    if not tokens or any(not 1 <= t <= moe_decode.DECODE_MAX_TOKENS for t in tokens):
        ap.error(f"--tokens: integers in [1, {moe_decode.DECODE_MAX_TOKENS}], got {args.tokens!r}")
    rows = []
    for model, shape in MODELS.items():
        for T in tokens:
            for path in PATHS:
                ops = layer_ops(path, *shape, T)
                rows.append(dict(model=model, tokens=T, path=path, ops=ops, total=sum(ops.values())))
                print(f"{model} T={T} {path}: {rows[-1]['total']} ops {ops}", flush=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(rows, fh, indent=1)
    with open(args.out + ".md", "w") as fh:
        fh.write(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
