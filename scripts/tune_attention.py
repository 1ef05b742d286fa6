"""Sweep the paged-attention kernel's tile configurations on this GPU and write the winners to the
tile table.

For each model shape and each representative call (decode batches, a long prefill, mixed batches
as the schedules make them; the cases of bench_attention), times per layer as the engine calls it
(the tile plan made beforehand) every candidate of `candidates`
and the entry that serves this device now (on an untuned Hopper GPU: the nearest tuned one's), and
stores the fastest under (H, N, A, rows bucket, kind, device kind) in
pallas_kernels/attention_tiles.json (entries of other devices and shapes are kept). The whole
sweep goes to --log as JSON.

Usage (GPU machine): PYTHONPATH=. python3 scripts/tune_attention.py --log $OUT/attention_tune.json \
    --table-out $OUT/attention_tiles.json [--models qwen3 --calls "decode 64x4K,prefill 1x8K" --reps 5]
On a device without entries (e.g. the H200) this adds entries under its own device kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
import traceback

import jax

from bench_attention import MIXED, SHAPES, ours_layer_fn, ragged_case
from kernel_timing import jax_time_ms
from pallas_kernels import attention_tuning
from tuning_cli import add_table_args, start_table, write_json
from pallas_kernels.tile_tables import rows_bucket
from pallas_kernels.attention_reference import FULL_WINDOW
from pallas_kernels.paged_attention import AttentionTileConfig

CALLS = {  # name: sequences [(kv_len, q_len)]
    "decode 64x4K": [(4096, 1)] * 64,
    "decode 256x1K": [(1024, 1)] * 256,
    "decode 8x16K": [(16384, 1)] * 8,
    "prefill 1x8K": [(8192, 8192)],
    "prefill 1x2K": [(2048, 2048)],
    **{name.split(":")[0]: seqs for name, seqs in MIXED.items()},
}


def candidates(H: int, N: int, A: int, kind: str) -> list[AttentionTileConfig]:
    """Configurations that tile this shape and fit in SMEM: 64 wgmma rows (one compute
    warpgroup) for decode (more only pads), 64 or 128 (two) for prefill; 64/128-key blocks, the
    deepest ring that fits and one stage less (decode: up to 8, prefill: up to 4); one CTA per SM
    (a CTA already overlaps loads, softmax and matmuls across its warpgroups); automatic splits."""
    R = H // N
    rows = (64,) if kind == "decode" else (64, 128)
    out = []
    for r, bk in itertools.product(rows, (64, 128)):
        deepest = attention_tuning.deepest(AttentionTileConfig(block_q=r // R, block_kv=bk), R, A,
                                           8 if kind == "decode" else 4)
        for stages in {deepest.stages, max(2, deepest.stages - 1)}:
            cfg = dataclasses.replace(deepest, stages=stages)
            cfg.validate(R, A, 16)
            out.append(cfg)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--calls", default=",".join(CALLS))
    add_table_args(ap, attention_tuning.TABLE_PATH, "attention_tune.json")
    args = ap.parse_args(argv)
    device = jax.devices()[0].device_kind
    table = start_table(attention_tuning.TABLE_PATH, args.table_out)
    sweep = []
    for model in args.models.split(","):
        H, N, A = SHAPES[model]
        for call in args.calls.split(","):
            sets, meta = ragged_case(CALLS[call], H, N, A, key=len(call))
            kind = attention_tuning.call_kind(meta["T"], meta["B"])
            best = None
            prior = attention_tuning.choose(H, N, A, meta["T"], meta["B"], device)
            cands = candidates(H, N, A, kind)
            cands = cands if prior.config in cands else [prior.config, *cands]
            print(f"{model} {call}: {len(cands)} candidates; now served by {prior.describe()}: {prior.config}",
                  flush=True)
            for cfg in cands:
                t0 = time.time()
                fn = ours_layer_fn(sets[0], FULL_WINDOW, H, N, A, config=cfg)  # as the engine calls it
                try:
                    ms, err = jax_time_ms(fn, sets, args.reps), None
                except Exception as e:  # noqa: BLE001 - e.g. a register spill failure: skip it
                    traceback.print_exc()
                    ms, err = None, f"{type(e).__name__}: {str(e)[:200]}"
                sweep.append(dict(model=model, call=call, kind=kind, ms=ms, error=err, device=device,
                                  config=dataclasses.asdict(cfg)))
                print(f"{model} {call} {ms} ms ({time.time() - t0:.1f}s) {cfg}", flush=True)
                if ms is not None and (best is None or ms < best[0]):
                    best = (ms, cfg)
            write_json(args.log, sweep)
            if best is None:
                continue
            key = dict(H=H, N=N, A=A, rows_bucket=rows_bucket(meta["T"]), kind=kind, device=device)
            table = [e for e in table if {k: e[k] for k in key} != key]
            table.append(dict(**key, config=dataclasses.asdict(best[1]), ms=best[0], call=call))
            write_json(args.table_out, table)


if __name__ == "__main__":
    sys.exit(main())
