"""Benchmark the ragged paged-attention kernel (Pallas Mosaic GPU) against its peers, on one GPU.

Cases (bf16, page size 16, one layer's pool, every K/V already in its pages):
  decode   batch 1 x 2K, batch 8/64/256 x context 1K/4K/16K, Qwen3 shape (32 q heads, 4 KV heads, D=128);
           64 x 4K also in the GPT-OSS shape (64 q, 8 KV, D=64).
           Peer: jax.experimental.pallas.ops.gpu.paged_attention (Triton, deprecated; its own
           [N, P, Z, D] page layout; best of a small sweep). Floor: KV bytes / copy bandwidth.
  prefill  causal, 1K/4K/8K/16K tokens as one sequence and as 4 sequences of a quarter each;
           Qwen3 shape, and GPT-OSS (64 q, 8 KV, D=64) with and without a 128-token window (no
           sinks: the peers have none). Peers: jax.nn.dot_product_attention(implementation=
           "cudnn") on contiguous [B, S, H, D], tokamax's Mosaic flash attention if importable.
           FLOPs = 4 x visible (query, key) pairs x H x D.
  mixed    as the schedules produce them: chunked = 64 decodes at 2K + one 512-token chunk over
           a 2K paged prefix; layered = 64 decodes at 2K + a cohort of 4 prompts x 2048 tokens.
           Floor = max(KV bytes / copy bandwidth, FLOPs / bf16 matmul rate).
A peer that fails is recorded as null with the reason. Ceilings (copy bandwidth read+write, bf16
matmul rate, by several methods, beside the datasheet) are measured in the same run
(`kernel_ceilings.py`, or its JSON from earlier in the same command: --ceilings).

Ours is timed per layer as the engine calls it (the batch's tile plan made once beforehand and
passed in; `ours_ms`, compared with floors and peers) and planning for itself
(`ours_with_plan_ms`), and profiled with CUPTI (`profiler.measure`, one per-layer call): per-kernel
ms of the attention kernel and of any XLA kernels around it (ours_kernels_ms, their sum
ours_cupti_ms).

Time = device-synchronised wall time per call: one jitted program runs the call on NSETS input
sets (fresh queries; small decode pools get a copy of the pages per set, so L2 does not serve
them) back to back; its time / NSETS, median over --reps runs (`kernel_timing.jax_time_ms`).

Usage (GPU machine): PYTHONPATH=scripts:. python3 scripts/bench_attention.py --out-dir $OUT
    [--cases full|targets|quick] [--ceilings ceilings.json]
Writes attention_<device>[_<cases>].json (list of rows, rewritten after each case) and .md to --out-dir.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.8")

import jax
import jax.numpy as jnp
import numpy as np

from bench_moe import ceilings_line, device_slug, load_ceilings, rel_err
from kernel_ceilings import summary
from kernel_timing import jax_time_ms
from pallas_kernels.attention_reference import FULL_WINDOW, paged_attention_reference
from pallas_kernels.attention_tuning import TABLE as TILE_TABLE, choose
from pallas_kernels.paged_attention import batch_plan, paged_attention

Z = 16
NSETS = 4
SHAPES = {"qwen3": (32, 4, 128), "gpt_oss": (64, 8, 64)}  # H, N, A
POOL_BUDGET = 24e9  # bytes of K+V pools (ours + a peer's copy) a case may allocate
CHECK_ROWS = 128  # rows compared with the f32 reference (the last ones: they see the most keys)


# ---------------------------------------------------------------- inputs

def ragged_case(seqs, H, N, A, *, key=0, copies=1):
    """Inputs of one call for sequences [(kv_len, q_len)] (rows = each sequence's last q_len
    positions), `copies` input sets each with its own queries and (if copies > 1) its own pages.
    Returns (sets [(q, k_pool, v_pool, table, seq, pos)], meta)."""
    pages = [-(-kv // Z) for kv, _ in seqs]
    M = max(pages)
    B = len(seqs) + 1
    per_set = sum(pages)
    P = 1 + per_set * copies
    seq = np.concatenate([np.full(q, b, np.int32) for b, (_, q) in enumerate(seqs)])
    pos = np.concatenate([np.arange(kv - q, kv, dtype=np.int32) for kv, q in seqs])
    ks = jax.random.split(jax.random.key(key), 3)
    k_pool = jax.random.normal(ks[0], (1, P, Z, N, A), jnp.bfloat16)
    v_pool = jax.random.normal(ks[1], (1, P, Z, N, A), jnp.bfloat16)
    sets = []
    for c in range(NSETS):
        table = np.zeros((B, M), np.int32)
        first = 1 + (c % copies) * per_set
        for b, n in enumerate(pages):
            table[b, :n] = first + sum(pages[:b]) + np.arange(n)
        q = jax.random.normal(jax.random.fold_in(ks[2], c), (len(seq), H, A), jnp.bfloat16)
        sets.append((q, k_pool, v_pool, jnp.asarray(table), jnp.asarray(seq), jnp.asarray(pos)))
    return sets, dict(T=len(seq), B=B, M=M, P=P)


def kv_bytes(seqs, N, A):
    """K and V bytes a call must read at least once (bf16), unwindowed."""
    return sum(kv for kv, _ in seqs) * N * A * 2 * 2


def visible_pairs(seqs, window):
    """(query, key) pairs a causal (windowed) call computes, summed over sequences."""
    total = 0
    for kv, q in seqs:
        p = np.arange(kv - q, kv, dtype=np.int64)
        total += int(np.minimum(p + 1, window).sum())
    return total


def copies_for(seqs, N, A):
    """Page copies per set so NSETS sets of a small pool do not all sit in L2 (50 MB)."""
    return NSETS if kv_bytes(seqs, N, A) * NSETS <= 2e9 else 1


# ---------------------------------------------------------------- calls

def ours_fn(window=FULL_WINDOW):
    """Our call planning its own tiles (what a lone call costs)."""
    return jax.jit(lambda q, kp, vp, table, seq, pos: paged_attention(
        q, kp, vp, 0, table, seq, pos, window=window))


def ours_layer_fn(s, window, H, N, A, config=None):
    """Our call as the engine makes it for each layer: the batch's tile plan made once beforehand
    (the executor plans once per call, for all layers) and passed in. Same arguments as ours_fn.
    config: the tiles (default: the table's for this device)."""
    _, _, _, table, seq, pos = s
    plan = batch_plan(seq, pos, H=H, N=N, A=A, num_seqs=table.shape[0], windows=(window,), config=config)
    statics = {k: v for k, v in plan.items() if isinstance(v, int)}
    arrays = {k: v for k, v in plan.items() if k not in statics}
    layer = jax.jit(lambda q, kp, vp, table, seq, pos, arrays: paged_attention(
        q, kp, vp, 0, table, seq, pos, config=config, plan=dict(arrays, **statics)))
    return lambda q, kp, vp, table, seq, pos: layer(q, kp, vp, table, seq, pos, arrays)


def check_ours(fn, s, window):
    """Relative error of our output on the last CHECK_ROWS rows vs the f32 reference."""
    q, kp, vp, table, seq, pos = s
    out = fn(*s)[-CHECK_ROWS:]
    rows = slice(q.shape[0] - min(CHECK_ROWS, q.shape[0]), None)
    # f32 queries make the reference compute and return f32 (it upcasts the gathered pages).
    ref = jax.jit(functools.partial(paged_attention_reference, window=window, rows_per_block=16))(
        q[rows].astype(jnp.float32), kp, vp, 0, table, seq[rows], pos[rows])
    return rel_err(out, ref)


def triton_decode_fn(cfg):
    """jax's Triton paged_attention on its own layout: q [B, H, D], pages [N, P, Z, D]."""
    from jax.experimental.pallas.ops.gpu import paged_attention as triton_pa
    block_h, ppcb, k_splits = cfg
    return jax.jit(lambda q, kp, vp, table, lengths: triton_pa.paged_attention(
        q, kp, vp, table, lengths, block_h=block_h, pages_per_compute_block=ppcb, k_splits=k_splits))


def cudnn_fn(window, implementation="cudnn"):
    lw = None if window >= FULL_WINDOW else (window - 1, 0)
    return jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, local_window_size=lw, implementation=implementation))


def tokamax_fn(window):
    import tokamax
    kw = {} if window >= FULL_WINDOW else dict(local_window_size=(window - 1, 0))
    return jax.jit(lambda q, k, v: tokamax.dot_product_attention(
        q, k, v, is_causal=True, implementation="mosaic", **kw))


def contiguous(sets, nseq, S, H, N, A):
    """The prefill sets as [nseq, S, heads, D] contiguous arrays for cuDNN/tokamax."""
    out = []
    for q, kp, vp, table, _, _ in sets:
        pages = table[:nseq].reshape(-1)
        k = kp[0, pages].reshape(nseq, S, N, A)
        v = vp[0, pages].reshape(nseq, S, N, A)
        out.append((q.reshape(nseq, S, H, A), k, v))
    return out


# ---------------------------------------------------------------- cases

class Bench:
    def __init__(self, ceil, reps, log):
        self.ceil, self.reps, self.log = ceil, reps, log
        self.device = jax.devices()[0].device_kind

    def row(self, **kw):
        return dict(**kw, device=self.device, date=datetime.date.today().isoformat(),
                    copy_Bps=self.ceil["copy_Bps"], matmul_flops=self.ceil["matmul_flops"])

    def tiles(self, row, H, N, A, meta):
        """Record our tile configuration and which table entry it came from."""
        choice = choose(H, N, A, meta["T"], meta["B"], self.device)
        row.update(config=str(choice.config), tiles=choice.describe())
        self.log(f"  {row['case']}: tiles: {choice.describe()}")

    def measure(self, row, label, fn, sets, check=None):
        t0 = time.time()
        try:
            if check is not None:
                row[f"{label}_err"] = check()
            row[f"{label}_ms"] = jax_time_ms(fn, sets, self.reps)
        except Exception as e:  # noqa: BLE001 - one failing peer must not stop the others
            row[f"{label}_ms"] = None
            row[f"{label}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc()
        self.log(f"  {row['case']} {label}: {row.get(label + '_ms')} ms err={row.get(label + '_err')} "
                 f"({time.time() - t0:.1f}s)")

    def ours(self, row, sets, window, shape, check=True):
        """Time ours per layer (plan made once beforehand, as the engine calls it: `ours_ms`, the
        figure compared with floors and peers) and with its own planning (`ours_with_plan_ms`; the
        difference is what the plan costs a call, shared by all layers in the engine); profile the
        per-layer call. Returns the per-layer function."""
        H, N, A = shape
        fn = ours_layer_fn(sets[0], window, H, N, A)
        self.measure(row, "ours", fn, sets, check=(lambda: check_ours(fn, sets[0], window)) if check else None)
        self.measure(row, "ours_with_plan", ours_fn(window), sets)
        self.profile_ours(row, fn, sets[0])
        return fn

    def profile_ours(self, row, fn, s):
        """CUPTI per-kernel times (ms) of one call of ours: the attention kernel and the
        wrapper's XLA kernels (tile plan, query gather, output gather, split merge)."""
        try:
            from jax.experimental.mosaic.gpu import profiler
            _, kernels = profiler.measure(fn, aggregate=False)(*s)
            row["ours_kernels_ms"] = [(name[:60], t) for name, t in kernels or []]
            row["ours_cupti_ms"] = sum(t for _, t in kernels or [])
            row["ours_kernel_ms"] = sum(t for n, t in kernels or [] if "ragged_paged_attention" in n)
        except Exception as e:  # noqa: BLE001 - a profile is extra information
            row["ours_kernels_error"] = f"{type(e).__name__}: {str(e)[:200]}"

    def finish(self, row, bytes_, flops, peers):
        t_byte = bytes_ / self.ceil["copy_Bps"] * 1e3
        t_flop = flops / self.ceil["matmul_flops"] * 1e3
        row.update(kv_bytes=bytes_, flops=flops, floor_ms=max(t_byte, t_flop),
                   floor_kind="bandwidth" if t_byte >= t_flop else "matmul")
        o = row.get("ours_ms")
        if o:
            row["ours_GBps"] = bytes_ / (o / 1e3) / 1e9
            row["ours_tflops"] = flops / (o / 1e3) / 1e12
            row["floor_over_ours"] = row["floor_ms"] / o
            for p in peers:
                if row.get(f"{p}_ms"):
                    row[f"speedup_vs_{p}"] = row[f"{p}_ms"] / o
        return row

    def decode(self, batch, ctx, triton_cfgs, model="qwen3"):
        H, N, A = SHAPES[model]
        seqs = [(ctx, 1)] * batch
        bytes_ = kv_bytes(seqs, N, A)
        row = self.row(case=f"decode {model} {batch}x{ctx}", kind="decode", model=model, batch=batch,
                       context=ctx)
        if 2 * bytes_ * copies_for(seqs, N, A) > POOL_BUDGET:
            row["skipped"] = f"pools of {2 * bytes_ / 1e9:.1f} GB exceed the {POOL_BUDGET / 1e9:.0f} GB budget"
            self.log(f"  {row['case']}: {row['skipped']}")
            return row
        sets, meta = ragged_case(seqs, H, N, A, key=batch + ctx, copies=copies_for(seqs, N, A))
        self.tiles(row, H, N, A, meta)
        fn = self.ours(row, sets, FULL_WINDOW, (H, N, A), check=ctx <= 4096)
        # The Triton peer on its own page layout, same pages and queries.
        kp_t = jnp.transpose(sets[0][1][0], (2, 0, 1, 3))
        vp_t = jnp.transpose(sets[0][2][0], (2, 0, 1, 3))
        lengths = jnp.full((batch,), ctx, jnp.int32)
        tsets = [(s[0], kp_t, vp_t, s[3][:batch], lengths) for s in sets]
        best = None
        for cfg in triton_cfgs:
            sub = dict(case=row["case"])
            fn_t = triton_decode_fn(cfg)
            self.measure(sub, f"triton{cfg}", fn_t, tsets)
            t = sub.get(f"triton{cfg}_ms")
            if t is not None and (best is None or t < best[0]):
                best = (t, cfg, fn_t)
            elif t is None:
                row["triton_paged_attention_error"] = sub.get(f"triton{cfg}_error")
        row["triton_paged_attention_ms"] = best[0] if best else None
        if best:
            row["triton_paged_attention_config"] = dict(zip(("block_h", "pages_per_compute_block", "k_splits"),
                                                            best[1]))
            row.pop("triton_paged_attention_error", None)
            o_ours = np.asarray(fn(*sets[0]), np.float32)
            row["ours_vs_triton_err"] = rel_err(o_ours, np.asarray(best[2](*tsets[0]), np.float32))
        del kp_t, vp_t, sets, tsets
        return self.finish(row, bytes_, 4 * visible_pairs(seqs, FULL_WINDOW) * H * A,
                           ["triton_paged_attention"])

    def prefill(self, model, S, nseq, window, peers):
        H, N, A = SHAPES[model]
        seqs = [(S // nseq, S // nseq)] * nseq
        wname = "full" if window >= FULL_WINDOW else f"window {window}"
        row = self.row(case=f"prefill {model} {nseq}x{S // nseq} {wname}", kind="prefill", model=model,
                       tokens=S, sequences=nseq, window=None if window >= FULL_WINDOW else window)
        sets, meta = ragged_case(seqs, H, N, A, key=S + nseq)
        self.tiles(row, H, N, A, meta)
        fn = self.ours(row, sets, window, (H, N, A))
        csets = contiguous(sets, nseq, S // nseq, H, N, A)
        ours0 = np.asarray(fn(*sets[0]), np.float32).reshape(nseq, S // nseq, H, A)
        for peer in peers:
            try:
                pfn = cudnn_fn(window) if peer == "cudnn" else tokamax_fn(window)
            except Exception as e:  # noqa: BLE001 - e.g. tokamax not installed
                row[f"{peer}_ms"] = None
                row[f"{peer}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                self.log(f"  {row['case']} {peer}: unavailable ({row[f'{peer}_error']})")
                continue
            self.measure(row, peer, pfn, csets,
                         check=lambda: rel_err(np.asarray(pfn(*csets[0]), np.float32), ours0))
            if f"{peer}_err" in row:
                row[f"ours_vs_{peer}_err"] = row.pop(f"{peer}_err")
        del sets, csets
        return self.finish(row, kv_bytes(seqs, N, A), 4 * visible_pairs(seqs, window) * H * A, peers)

    def mixed(self, name, seqs):
        H, N, A = SHAPES["qwen3"]
        row = self.row(case=f"mixed {name}", kind="mixed", model="qwen3",
                       rows=sum(q for _, q in seqs), sequences=len(seqs))
        sets, meta = ragged_case(seqs, H, N, A, key=len(seqs), copies=copies_for(seqs, N, A))
        self.tiles(row, H, N, A, meta)
        self.ours(row, sets, FULL_WINDOW, (H, N, A))
        del sets
        return self.finish(row, kv_bytes(seqs, N, A), 4 * visible_pairs(seqs, FULL_WINDOW) * H * A, [])


# block_h, pages/block, k_splits: two of the earlier sweep of four, so the full run fits in 5 min
TRITON_SWEEP = [(16, 8, 16), (16, 4, 16)]


class _Saved(list):
    def __init__(self, save):
        super().__init__()
        self.save = save

    def append(self, row):
        super().append(row)
        self.save(self)
MIXED = {
    "chunked: 64 decodes at 2K + 512-token chunk over a 2K prefix": [(2048, 1)] * 64 + [(2560, 512)],
    "layered: 64 decodes at 2K + cohort of 4 x 2048-token prompts": [(2048, 1)] * 64 + [(2048, 2048)] * 4,
}


CASE_SETS = ("full", "targets", "quick")
TARGET_DECODE = (64, 4096)  # batch x context of the decode target (>= 85% of the bandwidth floor)
TARGET_PREFILL = 8192  # tokens of the causal prefill target (>= 0.95x cuDNN)


def run_all(bench, cases, save):
    """The cases of one set; save(rows) after each, so a cut-off run keeps its rows.
    quick: a handful (< 2 min), a first GPU check; targets: the issue's targets for both model
    shapes (decode 64 x 4K against the bandwidth floor and the Triton peer, 8K causal prefill
    against cuDNN); full: every case."""
    rows = _Saved(save)
    if cases == "quick":
        rows.append(bench.decode(64, 4096, TRITON_SWEEP[:1]))
        rows.append(bench.decode(1, 2048, TRITON_SWEEP[:1]))
        rows.append(bench.prefill("qwen3", 8192, 1, FULL_WINDOW, ["cudnn", "tokamax"]))
        rows.append(bench.prefill("gpt_oss", 4096, 1, 128, ["cudnn"]))
        rows.append(bench.mixed(*next(iter(MIXED.items()))))
        return rows
    if cases == "targets":
        batch, ctx = TARGET_DECODE
        for model in SHAPES:
            rows.append(bench.decode(batch, ctx, TRITON_SWEEP, model=model))
            rows.append(bench.prefill(model, TARGET_PREFILL, 1, FULL_WINDOW, ["cudnn"]))
        return rows
    rows.append(bench.decode(1, 2048, TRITON_SWEEP))
    for batch in (8, 64, 256):
        for ctx in (1024, 4096, 16384):
            rows.append(bench.decode(batch, ctx, TRITON_SWEEP))
    rows.append(bench.decode(64, 4096, TRITON_SWEEP, model="gpt_oss"))
    for S in (1024, 4096, 8192, 16384):
        for nseq in (1, 4):
            rows.append(bench.prefill("qwen3", S, nseq, FULL_WINDOW, ["cudnn", "tokamax"]))
            for window in (FULL_WINDOW, 128):
                rows.append(bench.prefill("gpt_oss", S, nseq, window, ["cudnn", "tokamax"]))
    for name, seqs in MIXED.items():
        rows.append(bench.mixed(name, seqs))
    return rows


# ---------------------------------------------------------------- report

def markdown(rows, ceil, device):
    def f(v, nd=3):
        return "-" if v is None else f"{v:.{nd}f}"

    def peer(r, p):
        t = r.get(f"{p}_ms")
        if t is None:
            return "null" if f"{p}_error" in r or f"{p}_ms" in r else "-"
        return f"{t:.3f} ({f(r.get(f'speedup_vs_{p}'), 2)}x)"

    date = rows[0]["date"] if rows else ""
    lines = [f"# Ragged paged attention, {device}, {date}", "",
             ceilings_line(ceil) + " Times: ms per call, device-synchronised, median "
             f"over input sets. (x) = peer time / ours (> 1: ours faster). floor/ours = fraction of the "
             "floor reached (1 = at the floor). ours ms (per layer): the call with the batch's tile plan made "
             "beforehand, as the engine makes it once per iteration for all layers; with its plan: the call "
             "planning for itself. kernel / all CUPTI ms: our attention kernel alone / all "
             "kernels of our call (tile plan, gathers, split merge), one profiled call. GB/s = K+V bytes / our time; TFLOP/s = 4 x visible "
             "pairs x H x D / our time. null = the peer failed (see the JSON for why).", "",
             f"Our tiles: {TILE_TABLE.describe_device(device)} (per row: the JSON's `tiles`).", ""]
    sections = [("decode", "Decode, page 16 (Qwen3: 32 q / 4 KV heads, D=128; GPT-OSS: 64 q / 8 KV heads, D=64)",
                 "triton_paged_attention", "jax Triton paged_attention ms (x)"),
                ("prefill", "Prefill, causal", None, None),
                ("mixed", "Mixed batches (Qwen3 shape)", None, None)]
    for kind, title, p1, p1_name in sections:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        head = ("| case | ours ms (per layer) | with its plan ms | kernel / all CUPTI ms | GB/s | TFLOP/s "
                "| floor ms (kind) | floor/ours |")
        if kind == "decode":
            head += f" {p1_name} |"
        elif kind == "prefill":
            head += " cuDNN ms (x) | tokamax mosaic ms (x) |"
        lines += [f"## {title}", "", head, "|" + " --- |" * (head.count("|") - 1)]
        for r in rs:
            if "skipped" in r:
                lines.append(f"| {r['case']} | skipped: {r['skipped']} |")
                continue
            line = (f"| {r['case']} | {f(r.get('ours_ms'))} | {f(r.get('ours_with_plan_ms'))} | {f(r.get('ours_kernel_ms'))} / "
                    f"{f(r.get('ours_cupti_ms'))} | {f(r.get('ours_GBps'), 0)} "
                    f"| {f(r.get('ours_tflops'), 0)} | {f(r.get('floor_ms'))} ({r.get('floor_kind')}) "
                    f"| {f(r.get('floor_over_ours'), 2)} |")
            if kind == "decode":
                line += f" {peer(r, p1)} |"
            elif kind == "prefill":
                line += f" {peer(r, 'cudnn')} | {peer(r, 'tokamax')} |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--reps", type=int, default=20, help="timed runs per case (median reported)")
    ap.add_argument("--cases", choices=CASE_SETS, default="full",
                    help="full: every case; targets: decode 64x4K and 8K prefill of both models (the issue's "
                         "targets); quick: a handful (< 2 min), a first GPU check")
    ap.add_argument("--quick", action="store_const", const="quick", dest="cases", help="same as --cases quick")
    ap.add_argument("--ceilings", help="ceilings JSON of this run (kernel_ceilings.py --out); default: measure them")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps must be >= 1, got {args.reps}")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = jax.devices()[0].device_kind
    os.makedirs(args.out_dir, exist_ok=True)

    def log(s):
        print(s, flush=True)

    quick = args.cases == "quick"
    ceil = load_ceilings(args.ceilings, reps=5 if quick else 10)
    log(summary(ceil))
    bench = Bench(ceil, 5 if quick else args.reps, log)
    slug = device_slug(device) + ("" if args.cases == "full" else f"_{args.cases}")

    def save(rows):
        with open(os.path.join(args.out_dir, f"attention_{slug}.json"), "w") as fh:
            json.dump(list(rows), fh, indent=1)
    rows = run_all(bench, args.cases, save)
    md = markdown(rows, ceil, device)
    with open(os.path.join(args.out_dir, f"attention_{slug}.md"), "w") as fh:
        fh.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
