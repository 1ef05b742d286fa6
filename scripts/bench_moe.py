"""Benchmark the MoE expert layer: ours (Pallas Mosaic GPU) against its peers, on one GPU.

Peers, each the same layer (given routing -> sort -> gate/up -> activation -> down -> weighted
combine), all in this one process:
  torch_grouped_mm   torch._grouped_mm (gate and up as one [E, D, 2F] product), HF-style torch
                     (bf16 elementwise, index_add_ combine), the faster B layout, CUDA graph
  ragged_dot_mgpu    jax.experimental.pallas.ops.gpu.ragged_dot_mgpu, block sizes by rows
  lax_ragged_dot     jax.lax.ragged_dot
  tokamax            not installed on the GPU machine: reported as null
Ceilings measured in the same run: device-to-device copy bandwidth (bytes read + written) and a
bf16 8192^3 matmul, each the best of JAX and torch. floor = max(FLOPs / matmul rate,
active-expert bytes / copy bandwidth), FLOPs = 6 * rows * D * F over real rows only.

Time = device-synchronised wall time of one layer call: one program (a jitted function, or a
CUDA graph for torch) runs the layer on 8 distinct input sets (fresh x and routing, so different
experts are hot) back to back; its time / 8, median over `--reps` runs.

Usage (GPU machine): PYTHONPATH=. python3 scripts/bench_moe.py --out-dir benchmarks/results
Writes moe_<device>.json (list of rows) and moe_<device>.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import re
import statistics
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.7")

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import moe_tuning
from pallas_kernels.activations import apply_activation
from pallas_kernels.moe import moe_experts_pallas
from pallas_kernels.moe_reference import moe_experts_reference, random_experts

MODELS = {
    # name: E, top-k, D, F, activation, biases
    "qwen3_30b_a3b": (128, 8, 2048, 768, "swiglu", False),
    "gpt_oss_20b": (32, 4, 2880, 2880, "clamped_swiglu", True),
}
TOKENS = (1, 8, 32, 64, 128, 256, 512, 2048, 8192, 16384)
NSETS = 8


def device_slug(kind: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_")
    return s.removeprefix("nvidia_")


# ---------------------------------------------------------------- timing

def jax_time_ms(fn, sets, reps):
    """Median device-synchronised time (ms) of one fn call.

    One jitted program runs fn once on each of the (distinct) input sets back to back, so host
    dispatch overlaps device work and nothing is served from a previous call's L2 content more
    than real serving would; wall time of that program / len(sets), median over reps."""
    many = jax.jit(lambda ss: [fn(*s) for s in ss])
    jax.block_until_ready(many(sets))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(many(sets))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3 / len(sets)


def torch_time_ms(fn, sets, reps):
    """Same for torch: the calls over all sets captured in one CUDA graph (eager if capture
    fails), replayed reps times."""
    import torch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for s in sets:
            fn(*s)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for s in sets:
                fn(*s)
        run = graph.replay
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print("  torch: CUDA graph capture failed, timing eager calls", flush=True)

        def run():
            for s in sets:
                fn(*s)
    run()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3 / len(sets)


def ceilings(reps=10):
    """Copy bandwidth (B/s, read + write) and bf16 matmul rate (FLOP/s): best of JAX, torch."""
    out = {}
    n = 1 << 28  # 512 MiB of bf16 per array
    xs = [(jax.random.normal(jax.random.key(i), (n,), jnp.bfloat16),) for i in range(4)]
    t = jax_time_ms(lambda a: a + jnp.bfloat16(1), xs, reps)
    out["jax_copy_Bps"] = 2 * 2 * n / (t / 1e3)
    del xs
    s = 8192
    ms = [tuple(jax.random.normal(jax.random.key(10 + 2 * i + j), (s, s), jnp.bfloat16)
                for j in range(2)) for i in range(4)]
    t = jax_time_ms(jnp.dot, ms, reps)
    out["jax_matmul_flops"] = 2 * s**3 / (t / 1e3)
    del ms
    try:
        import torch
        src = [torch.randn(n, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
        dst = [torch.empty_like(a) for a in src]
        t = torch_time_ms(lambda a, b: b.copy_(a), list(zip(src, dst)), reps)
        out["torch_copy_Bps"] = 2 * 2 * n / (t / 1e3)
        del src, dst
        ab = [(torch.randn(s, s, device="cuda", dtype=torch.bfloat16),
               torch.randn(s, s, device="cuda", dtype=torch.bfloat16)) for _ in range(4)]
        t = torch_time_ms(torch.matmul, ab, reps)
        out["torch_matmul_flops"] = 2 * s**3 / (t / 1e3)
        del ab
        torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - the JAX numbers still stand
        traceback.print_exc()
    out["copy_Bps"] = max(v for k, v in out.items() if k.endswith("copy_Bps"))
    out["matmul_flops"] = max(v for k, v in out.items() if k.endswith("matmul_flops"))
    return out


# ---------------------------------------------------------------- inputs


def make_sets(key, T, D, E, K):
    """NSETS (x [T, D] bf16, weights [T, K] f32, ids [T, K] int32) with random top-k routing."""
    sets = []
    for k in jax.random.split(key, NSETS):
        k1, k2 = jax.random.split(k)
        x = jax.random.normal(k1, (T, D), jnp.bfloat16)
        top, ids = jax.lax.top_k(jax.random.normal(k2, (T, E)), K)
        sets.append((x, jax.nn.softmax(top, axis=-1), ids.astype(jnp.int32)))
    return sets


def rel_err(out, ref):
    out = np.asarray(out, np.float32)
    ref = np.asarray(ref, np.float32)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


# ---------------------------------------------------------------- peers

def jax_peer_layer(x, w_TK, ids_TK, wgu, wd, bgu, bd, *, activation, grouped):
    """The layer on a JAX grouped matmul `grouped(lhs [A, K], rhs [E, K, N], group_sizes)`."""
    T, K = ids_TK.shape
    E, _, F2 = wgu.shape
    flat = ids_TK.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    gs = jnp.bincount(flat, length=E).astype(jnp.int32)
    xs = x[order // K]
    e_sorted = flat[order]
    gu = grouped(xs, wgu, gs).astype(jnp.float32)
    if bgu is not None:
        gu = gu + bgu[e_sorted].astype(jnp.float32)
    h = apply_activation(activation, gu[:, :F2 // 2], gu[:, F2 // 2:]).astype(x.dtype)
    out = grouped(h, wd, gs).astype(jnp.float32)
    if bd is not None:
        out = out + bd[e_sorted].astype(jnp.float32)
    out = out * w_TK.reshape(-1)[order][:, None]
    return jnp.zeros(x.shape, jnp.float32).at[order // K].add(out).astype(x.dtype)


def ragged_dot_mgpu_fn(cfg):
    from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu
    bm, bn, bk, steps = cfg
    return lambda lhs, rhs, gs: ragged_dot_mgpu.ragged_dot(
        lhs, rhs, group_sizes=gs, block_m=bm, block_n=bn, block_k=bk,
        max_concurrent_steps=steps, grid_block_n=1)


def lax_ragged_dot(lhs, rhs, gs):
    return jax.lax.ragged_dot(lhs, rhs, gs)


def torch_layer_fn(activation, alpha=1.702, limit=7.0):
    """The layer as HF / vLLM-style torch code: bf16 elementwise work, index_add_ combine."""
    import torch
    import torch.nn.functional as Fn

    def layer(x, w_TK, ids_TK, wgu, wd, bgu, bd):
        T, K = ids_TK.shape
        E = wgu.shape[0]
        F = wgu.shape[2] // 2
        flat = ids_TK.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.zeros(E, dtype=torch.int32, device=x.device).index_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = torch.cumsum(counts, 0, dtype=torch.int32)
        tok = order // K
        e_sorted = flat[order]
        gu = torch._grouped_mm(x[tok], wgu, offs=offs)
        if bgu is not None:
            gu = gu + bgu[e_sorted]
        gate, up = gu[:, :F], gu[:, F:]
        if activation == "swiglu":
            h = Fn.silu(gate) * up
        else:
            gate = gate.clamp(max=limit)
            h = gate * torch.sigmoid(alpha * gate) * (up.clamp(-limit, limit) + 1)
        out = torch._grouped_mm(h, wd, offs=offs)
        if bd is not None:
            out = out + bd[e_sorted]
        out = out * w_TK.reshape(-1)[order, None].to(out.dtype)
        return torch.zeros_like(x).index_add_(0, tok, out)

    return layer


def torch_weights(wgu, wd):
    """torch._grouped_mm's faster B layout on this device: [E, K, N] as stored (row-major) or
    an [E, N, K] copy viewed as [E, K, N] (column-major), timed on 8192 uniform rows."""
    import torch
    best = None
    for layout in ("row", "col"):
        if layout == "row":
            tw = (to_torch(wgu), to_torch(wd))
        else:
            tw = (to_torch(jnp.swapaxes(wgu, 1, 2)).transpose(1, 2),
                  to_torch(jnp.swapaxes(wd, 1, 2)).transpose(1, 2))
        E, D = tw[0].shape[:2]
        A = 8192
        offs = torch.arange(1, E + 1, device="cuda", dtype=torch.int32) * (A // E)
        xs = torch.randn(A, D, device="cuda", dtype=torch.bfloat16)
        try:
            t = torch_time_ms(lambda a, b: torch._grouped_mm(a, b, offs=offs), [(xs, tw[0])], 5)
        except Exception:  # noqa: BLE001 - a layout this torch build rejects
            traceback.print_exc()
            continue
        print(f"  torch._grouped_mm {layout}-major B: {t:.3f} ms", flush=True)
        if best is None or t < best[0]:
            best = (t, layout, tw)
    return best[1], best[2]


def to_torch(a):
    import torch
    return torch.from_dlpack(a)


# ---------------------------------------------------------------- main bench

def rdm_config(rows, D, F):
    """ragged_dot_mgpu block sizes (block_m, block_n, block_k, stages): block_n must divide
    2F and D; 64-row tiles while experts get few rows. A fixed choice (device time did not
    allow sweeping this peer; see benchmarks/notes_moe.md)."""
    bn = 128 if (2 * F) % 128 == 0 and D % 128 == 0 else 192
    return (64 if rows <= 4096 else 128, bn, 64, 4 if bn == 128 else 3)


def bench_model(name, tokens, ceil, peers, reps, log):
    E, K, D, F, act, bias = MODELS[name]
    ex = random_experts(jax.random.key(7), E, D, F, bias)
    wgu = jnp.concatenate([ex["w_gate"], ex["w_up"]], axis=-1)  # peers: one [E, D, 2F] product
    bgu = jnp.concatenate([ex["b_gate"], ex["b_up"]], axis=-1) if bias else None
    bd = ex.get("b_down")
    expert_bytes = 3 * D * F * 2 + ((2 * F + D) * 2 if bias else 0)
    ours = jax.jit(functools.partial(moe_experts_pallas, activation=act))
    ref = jax.jit(functools.partial(moe_experts_reference, activation=act))
    torch_w, layout = None, None
    if "torch_grouped_mm" in peers:
        layout, tw = torch_weights(wgu, ex["w_down"])
        torch_w = (*tw, to_torch(bgu) if bias else None, to_torch(bd) if bias else None)
        torch_layer = torch_layer_fn(act)
    rows_out = []
    for T in tokens:
        sets = make_sets(jax.random.key(T), T, D, E, K)
        A = T * K
        distinct = float(np.mean([len(np.unique(np.asarray(s[2]))) for s in sets]))
        flops = 6.0 * A * D * F
        bytes_ = distinct * expert_bytes
        t_flop = flops / ceil["matmul_flops"] * 1e3
        t_byte = bytes_ / ceil["copy_Bps"] * 1e3
        row = dict(model=name, tokens=T, rows=A, distinct_experts=distinct, flops=flops,
                   expert_bytes=bytes_, floor_ms=max(t_flop, t_byte),
                   floor_kind="matmul" if t_flop > t_byte else "bandwidth",
                   device=jax.devices()[0].device_kind,
                   date=datetime.date.today().isoformat(), tokamax_ms=None,
                   copy_Bps=ceil["copy_Bps"], matmul_flops=ceil["matmul_flops"],
                   torch_B_layout=layout)
        tiles = moe_tuning.choose(E, D, F, A, row["device"])
        row.update(ours_config=str(tiles.config), tiles=tiles.describe())
        log(f"  {name} T={T}: tiles: {tiles.describe()}")
        # Reference on the first (up to) 256 tokens: a token's output depends only on its own
        # routing, and lax.ragged_dot's lowering needs [rows, E * D] memory.
        n_chk = min(T, 256)
        x0, w0, i0 = sets[0]
        r0 = ref(x0[:n_chk], w0[:n_chk], i0[:n_chk], ex)
        args = lambda s: (s[0], s[1], s[2], ex)  # noqa: E731

        def measure(label, fn, sets_, check=None, timer=jax_time_ms):
            t0 = time.time()
            try:
                if check is not None:
                    row[f"{label}_err"] = rel_err(np.asarray(check())[:n_chk], r0)
                row[f"{label}_ms"] = timer(fn, sets_, reps if "lax" not in label else 5)
            except Exception as e:  # noqa: BLE001 - one failing peer must not stop the others
                row[f"{label}_ms"] = None
                row[f"{label}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                traceback.print_exc()
            log(f"  {name} T={T} {label}: {row.get(label + '_ms')} ms "
                f"err={row.get(label + '_err')} ({time.time() - t0:.1f}s)")

        measure("ours", ours, [args(s) for s in sets], check=lambda: ours(*args(sets[0])))
        if "torch_grouped_mm" in peers:
            tsets = [(to_torch(s[0]), to_torch(s[1]), to_torch(s[2]).long()) + torch_w
                     for s in sets]
            measure("torch_grouped_mm", torch_layer, tsets, timer=torch_time_ms,
                    check=lambda: np.asarray(torch_layer(*tsets[0]).float().cpu()))
        jsets = [(s[0], s[1], s[2], wgu, ex["w_down"], bgu, bd) for s in sets]
        if "ragged_dot_mgpu" in peers:
            cfg = rdm_config(A, D, F)
            row["ragged_dot_mgpu_config"] = cfg
            fn = jax.jit(functools.partial(jax_peer_layer, activation=act,
                                           grouped=ragged_dot_mgpu_fn(cfg)))
            measure("ragged_dot_mgpu", fn, jsets, check=lambda: fn(*jsets[0]))
        if "lax_ragged_dot" in peers:
            if A * E * D * 2 > 24 << 30:
                row["lax_ragged_dot_ms"] = None
                row["lax_ragged_dot_error"] = "skipped: its lowering needs a [rows, E*D] bf16 buffer"
            else:
                fn = jax.jit(functools.partial(jax_peer_layer, activation=act,
                                               grouped=lax_ragged_dot))
                measure("lax_ragged_dot", fn, jsets[:1] if A > 8192 else jsets)
        o = row.get("ours_ms")
        if o:
            row["ours_tflops"] = flops / (o / 1e3) / 1e12
            row["ours_GBps"] = bytes_ / (o / 1e3) / 1e9
            row["ours_over_floor"] = o / row["floor_ms"]
            for p in ("torch_grouped_mm", "ragged_dot_mgpu", "lax_ragged_dot"):
                if row.get(f"{p}_ms"):
                    row[f"speedup_vs_{p}"] = row[f"{p}_ms"] / o
        rows_out.append(row)
    return rows_out


def breakdown(name, T, log):
    """Per-kernel GPU time (CUPTI) of one call of our layer, for the notes' profile."""
    from jax.experimental.mosaic.gpu import profiler
    E, K, D, F, act, bias = MODELS[name]
    ex = random_experts(jax.random.key(7), E, D, F, bias)
    x, w, ids = make_sets(jax.random.key(T), T, D, E, K)[0]
    fn = jax.jit(functools.partial(moe_experts_pallas, activation=act))
    jax.block_until_ready(fn(x, w, ids, ex))
    _, kernels = profiler.measure(fn, aggregate=False)(x, w, ids, ex)
    log(f"breakdown {name} T={T}: total {sum(t for _, t in kernels):.4f} ms")
    for k, t in kernels:
        log(f"    {t:9.4f} ms  {k[:110]}")
    return kernels


def markdown(rows, ceil, device):
    def f(v, nd=3):
        return "-" if v is None else f"{v:.{nd}f}"

    lines = [f"# MoE layer, {device}, {rows[0]['date'] if rows else ''}", "",
             f"Ceilings (same run): copy {ceil['copy_Bps'] / 1e12:.2f} TB/s (read+write), "
             f"bf16 matmul {ceil['matmul_flops'] / 1e12:.0f} TFLOP/s. Times: ms per layer call, "
             "device-synchronised, median. x = that peer's time / ours (>1: ours faster). "
             "GB/s = active-expert weight bytes / our time.", "",
             f"Our tiles: {moe_tuning.TABLE.describe_device(device)} (per row: the JSON's `tiles`).", "",
             "| model | tokens | ours ms | TFLOP/s | GB/s (experts) | floor ms (kind) | ours/floor "
             "| torch._grouped_mm ms (x) | ragged_dot_mgpu ms (x) | lax.ragged_dot ms (x) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        def peer(p):
            t = r.get(f"{p}_ms")
            s = r.get(f"speedup_vs_{p}")
            return "-" if t is None else f"{t:.3f} ({f(s, 2)}x)"
        lines.append(
            f"| {r['model']} | {r['tokens']} | {f(r.get('ours_ms'))} | {f(r.get('ours_tflops'), 0)} "
            f"| {f(r.get('ours_GBps'), 0)} | {f(r['floor_ms'])} ({r['floor_kind']}) "
            f"| {f(r.get('ours_over_floor'), 2)} | {peer('torch_grouped_mm')} "
            f"| {peer('ragged_dot_mgpu')} | {peer('lax_ragged_dot')} |")
    lines.append("")
    lines.append("tokamax: not installed on the GPU machine, not measured.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--peers", default="torch_grouped_mm,ragged_dot_mgpu,lax_ragged_dot")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--breakdown", action="store_true",
                    help="only print the per-kernel time of our layer for --models x --tokens")
    ap.add_argument("--once", action="store_true",
                    help="only run our layer twice per --models x --tokens (a target for ncu)")
    args = ap.parse_args(argv)
    device = jax.devices()[0].device_kind
    slug = device_slug(device)
    os.makedirs(args.out_dir, exist_ok=True)

    def log(s):
        print(s, flush=True)

    if args.breakdown or args.once:
        for name in args.models.split(","):
            for T in map(int, args.tokens.split(",")):
                if args.breakdown:
                    breakdown(name, T, log)
                    continue
                E, K, D, F, act, bias = MODELS[name]
                ex = random_experts(jax.random.key(7), E, D, F, bias)
                x, w, ids = make_sets(jax.random.key(T), T, D, E, K)[0]
                fn = jax.jit(functools.partial(moe_experts_pallas, activation=act))
                for _ in range(2):
                    jax.block_until_ready(fn(x, w, ids, ex))
        return 0

    ceil = ceilings()
    log(f"{device}: copy {ceil['copy_Bps'] / 1e12:.3f} TB/s, matmul "
        f"{ceil['matmul_flops'] / 1e12:.1f} TFLOP/s ({json.dumps(ceil)})")
    peers = [p for p in args.peers.split(",") if p]
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name, [int(t) for t in args.tokens.split(",")], ceil, peers,
                            args.reps, log)
        with open(os.path.join(args.out_dir, f"moe_{slug}.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
    md = markdown(rows, ceil, device)
    with open(os.path.join(args.out_dir, f"moe_{slug}.md"), "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
