"""Sweep the MoE layer's tile configurations on this GPU and write the winners to the tile table.

For each model shape and token count, times the whole layer (both kernels share block_m and
the orientation) for every candidate of `candidates` and for the entry that serves this device
now (on an untuned Hopper GPU: the nearest tuned one's), and stores the fastest under
(E, D, F, rows bucket, device kind) in pallas_kernels/moe_tiles.json (entries of other devices
and shapes are kept). The full sweep goes to --log as JSON.

Usage (GPU machine): PYTHONPATH=. python3 scripts/tune_moe.py --log $OUT/moe_tune.json \
    --table-out $OUT/moe_tiles.json [--models qwen3_30b_a3b --tokens 1,64 --reps 5]
On a device without entries (e.g. the H200) this adds entries under its own device kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
import traceback

import jax

from bench_moe import MODELS, make_sets
from kernel_timing import jax_time_ms
from pallas_kernels import moe_tuning
from tuning_cli import add_table_args, start_table, write_json
from pallas_kernels.grouped_matmul import TileConfig
from pallas_kernels.moe import moe_experts_pallas
from pallas_kernels.moe_reference import random_experts
from pallas_kernels.moe_tuning import MoETileConfig
from pallas_kernels.tile_tables import rows_bucket


def _blocks(n: int, options) -> list[int]:
    return [b for b in options if n % b == 0]


SMEM_LIMIT = 227 * 1024 - 1024  # H100 per-block maximum, less room for barriers


def _fit(cfg: TileConfig, num_weights: int) -> TileConfig:
    """cfg with the deepest pipeline (<= cfg.stages) that fits in shared memory."""
    while cfg.stages > 2 and cfg.smem_bytes(num_weights) > SMEM_LIMIT:
        cfg = dataclasses.replace(cfg, stages=cfg.stages - 1)
    return cfg


def candidates(E: int, D: int, F: int, rows: int) -> list[MoETileConfig]:
    """Configurations worth timing for this shape: decode orientation while experts get few rows,
    tokens-on-M tiles once they get many, both around the crossover."""
    per_expert = rows / max(1, min(E, rows))
    out = []
    pairs = []
    if per_expert <= 48:
        for bm in (16, 32) if per_expert > 12 else (16,):
            gns = _blocks(F, (64, 128, 192))[:2 if bm == 16 else 1]
            for gn in gns:
                for dn in _blocks(D, (128, 192, 256, 64))[:2]:
                    pairs.append((TileConfig(bm, gn, stages=6, num_compute_wgs=1, swap=True),
                                  TileConfig(bm, dn, stages=6, num_compute_wgs=1, swap=True)))
    if 8 <= per_expert <= 64:  # one 64-row warpgroup per tile: less padding than 128-row tiles
        for gn in _blocks(F, (128, 64))[:1]:
            for dn in _blocks(D, (128, 192, 64))[:1]:
                pairs.append((TileConfig(64, gn, stages=5, num_compute_wgs=1),
                              TileConfig(64, dn, stages=5, num_compute_wgs=1)))
    if per_expert >= 16:
        gns = [(128, 4), (64, 5)] if F % 128 == 0 else [(64, 5)]
        dns = [(b, 4) for b in _blocks(D, (128, 192))[:1]] + [(b, 3) for b in _blocks(D, (256, 64))[:1]]
        for gn, gs in gns:
            for dn, ds in dns:
                pairs.append((TileConfig(128, gn, stages=gs), TileConfig(128, dn, stages=ds)))
        pairs += [(TileConfig(256, 64, stages=4), TileConfig(256, dn, stages=4))
                  for dn, _ in dns[:1 if F % 128 == 0 else 2]]
    out = []
    for gu, down in pairs:
        cfg = MoETileConfig(_fit(gu, 2), _fit(down, 1))
        if cfg not in out:
            out.append(cfg)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tokens", default="1,32,256,2048,16384",
                    help="token counts to tune; other rows buckets take the nearest tuned one")
    add_table_args(ap, moe_tuning.TABLE_PATH, "moe_tune.json")
    args = ap.parse_args(argv)
    device = jax.devices()[0].device_kind
    table = start_table(moe_tuning.TABLE_PATH, args.table_out)
    sweep = []
    for name in args.models.split(","):
        E, K, D, F, act, bias = MODELS[name]
        ex = random_experts(jax.random.key(7), E, D, F, bias)
        for T in map(int, args.tokens.split(",")):
            sets = make_sets(jax.random.key(T), T, D, E, K)
            best = None
            # The entry this device uses now (its own, the nearest tuned Hopper's, or the
            # default) is timed too, so a new entry is never slower than what it replaces.
            prior = moe_tuning.choose(E, D, F, T * K, device)
            cands = candidates(E, D, F, T * K)
            cands = cands if prior.config in cands else [prior.config, *cands]
            print(f"{name} T={T}: {len(cands)} candidates; now served by {prior.describe()}: {prior.config}",
                  flush=True)
            for cfg in cands:
                t0 = time.time()
                fn = jax.jit(functools.partial(moe_experts_pallas, activation=act, config=cfg))
                try:
                    ms = jax_time_ms(fn, [(s[0], s[1], s[2], ex) for s in sets], args.reps)
                except Exception as e:  # noqa: BLE001 - e.g. SMEM overflow: skip the candidate
                    traceback.print_exc()
                    ms, err = None, f"{type(e).__name__}: {str(e)[:200]}"
                else:
                    err = None
                sweep.append(dict(model=name, tokens=T, ms=ms, error=err, device=device,
                                  gate_up=dataclasses.asdict(cfg.gate_up),
                                  down=dataclasses.asdict(cfg.down)))
                print(f"{name} T={T} {ms} ms ({time.time() - t0:.1f}s) {cfg}", flush=True)
                if ms is not None and (best is None or ms < best[0]):
                    best = (ms, cfg)
            if best is None:
                continue
            key = dict(E=E, D=D, F=F, rows_bucket=rows_bucket(T * K), device=device)
            table = [e for e in table if {k: e[k] for k in key} != key]
            table.append(dict(**key, gate_up=dataclasses.asdict(best[1].gate_up),
                              down=dataclasses.asdict(best[1].down), ms=best[0]))
            write_json(args.table_out, table)
            write_json(args.log, sweep)


if __name__ == "__main__":
    sys.exit(main())
