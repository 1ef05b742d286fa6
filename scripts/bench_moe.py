"""Benchmark the MoE expert layer: ours (Pallas Mosaic GPU) against its peers, on one GPU.

Ours is the layer the engine runs by default: the grouped layer (`moe.py`) at every size. Our
decode-size layer (`moe_decode.py`) is opt-in until measured on the H200: with
LP_JAX_MOE_DECODE_MAX_TOKENS=N set (1-64), it is measured beside ours in its own column
(`pallas_decode`, "-" above N tokens; its time / ours and / the floor); unset, the table says it
was not measured. It is ours too, so never the best peer. Peers, each the same layer
(given routing -> sort -> gate/up -> activation -> down -> weighted combine), all in this one
process, each with its own best configuration:
  vllm_fused_moe     vLLM's Triton fused_moe_kernel (from .peers/, `fetch_peers.py`) with our torch
                     routing-align step and a Triton activation (`vllm_moe.py`); vLLM's tuned
                     config file for the shape and device where it ships one, else the fastest of
                     a small sweep; CUDA graph
  torch_grouped_mm   torch._grouped_mm (gate and up as one [E, D, 2F] product), HF-style torch
                     (bf16 elementwise, index_add_ combine), the faster B layout, CUDA graph
  ragged_dot_mgpu    jax.experimental.pallas.ops.gpu.ragged_dot_mgpu, block sizes by rows
  lax_ragged_dot     jax.lax.ragged_dot
  tokamax            not installed on the GPU machine: reported as null
Ceilings measured in the same run (`kernel_ceilings.py`: copy bandwidth, bytes read + written, best
of four methods; bf16 8192^3 matmul, best of JAX and torch; beside the datasheet peaks).
floor = max(FLOPs / matmul rate, active-expert bytes / copy bandwidth), FLOPs = 6 * rows * D * F
over real rows only. Every peer's output is compared with the float32 reference (relative error
printed and in the JSON).

Time = device-synchronised wall time of one layer call: one program (a jitted function, or a
CUDA graph for torch) runs the layer on 8 distinct input sets (fresh x and routing, so different
experts are hot) back to back; its time / 8, median over `--reps` runs.

Usage (GPU machine): PYTHONPATH=scripts:. python3 scripts/bench_moe.py --out-dir benchmarks/results
    [--ceilings ceilings.json] [--models ...] [--tokens ...] [--peers ...]
Writes moe_<device>.json (list of rows, rewritten after each case) and moe_<device>.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import re
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.7")

import jax
import jax.numpy as jnp
import numpy as np

import vllm_moe
from kernel_ceilings import ceilings, summary
from kernel_timing import jax_time_ms, torch_time_ms
from lp_jax.bench.ceilings import ratio_text
from pallas_kernels import moe_tuning
from pallas_kernels.activations import apply_activation
from pallas_kernels.dispatch import moe_decode_max_tokens, moe_experts, moe_path
from pallas_kernels.moe import moe_experts_pallas
from pallas_kernels.moe_decode import moe_experts_decode, token_rows
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


def vllm_layer_for(T, K, E, F, layer_of, sets, reps, device_name, log):
    """vLLM's configuration for T tokens and the layer built with it: its tuned file's entry
    where vLLM ships one for this shape and device, else the fastest of our small sweep (timed
    here on the same input sets). Returns (layer, config, source)."""
    tuned = vllm_moe.tuned_configs(E, F, device_name)
    if tuned:
        key = vllm_moe.nearest_key(tuned, T)
        name = f"E={E},N={F},device_name={vllm_moe.vllm_device_name(device_name)}.json"
        return layer_of(tuned[key]), tuned[key], f"vLLM's tuned file {name} (its entry for {key} tokens)"
    best = None
    for cfg in vllm_moe.sweep_candidates(T, K, E):
        layer = layer_of(cfg)
        try:
            t = torch_time_ms(layer, sets, max(3, reps // 3))
        except Exception:  # noqa: BLE001 - e.g. out of shared memory: skip the candidate
            traceback.print_exc()
            continue
        log(f"    vllm sweep T={T}: {t:.4f} ms {cfg}")
        if best is None or t < best[0]:
            best = (t, cfg, layer)
    if best is None:
        raise RuntimeError("no candidate configuration of vLLM's kernel ran")
    return best[2], best[1], "our sweep of 4 (vLLM ships no tuned file for this shape and device)"


def bench_model(name, tokens, ceil, peers, reps, log, save, decode_limit=0):
    """Rows of one model at each token count; save(rows) after each, so a cut-off run keeps them.
    decode_limit: our decode-size layer is measured beside ours at up to this many tokens."""
    E, K, D, F, act, bias = MODELS[name]
    ex = random_experts(jax.random.key(7), E, D, F, bias)
    wgu = jnp.concatenate([ex["w_gate"], ex["w_up"]], axis=-1)  # peers: one [E, D, 2F] product
    bgu = jnp.concatenate([ex["b_gate"], ex["b_up"]], axis=-1) if bias else None
    bd = ex.get("b_down")
    expert_bytes = 3 * D * F * 2 + ((2 * F + D) * 2 if bias else 0)
    ours = jax.jit(functools.partial(moe_experts_pallas, activation=act))
    decode = jax.jit(functools.partial(moe_experts_decode, activation=act))
    ref = jax.jit(functools.partial(moe_experts_reference, activation=act))
    torch_w, layout = None, None
    broken = {}  # peer -> why its set-up failed (each of its rows says so)
    if "torch_grouped_mm" in peers:
        try:
            layout, tw = torch_weights(wgu, ex["w_down"])
            torch_w = (*tw, to_torch(bgu) if bias else None, to_torch(bd) if bias else None)
            torch_layer = torch_layer_fn(act)
        except Exception as e:  # noqa: BLE001 - e.g. no torch or no GPU: ours and the others still run
            traceback.print_exc()
            broken["torch_grouped_mm"] = f"set-up: {type(e).__name__}: {str(e)[:300]}"
    if "vllm_fused_moe" in peers:
        try:
            import torch
            device_name = torch.cuda.get_device_name()
            vllm_moe.load_kernel()  # fails here, once, if .peers was not carried
            vw = vllm_moe.vllm_weights(*(to_torch(ex[k]) if k in ex else None
                                         for k in ("w_gate", "w_up", "w_down", "b_gate", "b_up", "b_down")))
            vllm_layer_of = lambda cfg: vllm_moe.make_layer(vw, act, lambda T: cfg)  # noqa: E731
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            broken["vllm_fused_moe"] = f"set-up: {type(e).__name__}: {str(e)[:300]}"
    for p, why in broken.items():
        log(f"  {name}: peer {p} unavailable ({why})")
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
                   datasheet_copy_Bps=ceil.get("datasheet_copy_Bps"),
                   datasheet_matmul_flops=ceil.get("datasheet_matmul_flops"),
                   torch_B_layout=layout)
        tiles = moe_tuning.choose(E, D, F, A, row["device"])
        row.update(ours_config=str(tiles.config), tiles=tiles.describe())
        log(f"  {name} T={T}: tiles: {tiles.describe()}")
        if T <= decode_limit:  # that entry's block sizes, block_m = the token tile
            row["pallas_decode_config"] = str(moe_tuning.decode_config(E, D, F, A, token_rows(T), row["device"]))
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
                f"rel.err vs f32 reference={row.get(label + '_err')} ({time.time() - t0:.1f}s)")

        measure("ours", ours, [args(s) for s in sets], check=lambda: ours(*args(sets[0])))
        if T <= decode_limit:
            measure("pallas_decode", decode, [args(s) for s in sets], check=lambda: decode(*args(sets[0])))
        for p, why in broken.items():
            row[f"{p}_ms"], row[f"{p}_error"] = None, why
        live = [p for p in peers if p not in broken]
        tsets = None
        if "torch_grouped_mm" in live or "vllm_fused_moe" in live:
            tsets = [(to_torch(s[0]), to_torch(s[1]), to_torch(s[2]).long()) for s in sets]
        if "torch_grouped_mm" in live:
            gsets = [s + torch_w for s in tsets]
            measure("torch_grouped_mm", torch_layer, gsets, timer=torch_time_ms,
                    check=lambda: np.asarray(torch_layer(*gsets[0]).float().cpu()))
        if "vllm_fused_moe" in live:
            try:
                layer, cfg, source = vllm_layer_for(T, K, E, F, vllm_layer_of, tsets, reps, device_name, log)
                row.update(vllm_fused_moe_config=cfg, vllm_fused_moe_config_source=source)
                log(f"  {name} T={T} vllm_fused_moe config: {cfg} from {source}")
                measure("vllm_fused_moe", layer, tsets, timer=torch_time_ms,
                        check=lambda: np.asarray(layer(*tsets[0]).float().cpu()))
            except Exception as e:  # noqa: BLE001 - e.g. .peers not carried: the row says why
                traceback.print_exc()
                row["vllm_fused_moe_ms"] = None
                row["vllm_fused_moe_error"] = f"{type(e).__name__}: {str(e)[:300]}"
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
        finish_row(row, peers)
        rows_out.append(row)
        save(rows_out)
    return rows_out


def finish_row(row, peers):
    """Our rates, ratio to the floor, speedup over each peer and over our decode path (where
    measured), and the best (fastest) peer."""
    o = row.get("ours_ms")
    if row.get("pallas_decode_ms"):
        row["pallas_decode_over_floor"] = row["pallas_decode_ms"] / row["floor_ms"]
    timed = {p: row[f"{p}_ms"] for p in peers if row.get(f"{p}_ms")}
    if timed:
        best = min(timed, key=timed.get)
        row.update(best_peer=best, best_peer_ms=timed[best])
    if not o:
        return
    row["ours_tflops"] = row["flops"] / (o / 1e3) / 1e12
    row["ours_GBps"] = row["expert_bytes"] / (o / 1e3) / 1e9
    row["ours_over_floor"] = o / row["floor_ms"]
    for p, t in [*timed.items(), ("pallas_decode", row.get("pallas_decode_ms"))]:
        if t:
            row[f"speedup_vs_{p}"] = t / o
    if timed:
        row["speedup_vs_best_peer"] = row["best_peer_ms"] / o


def breakdown(name, T, log):
    """Per-kernel GPU time (CUPTI) of one call of the layer the engine runs (the grouped layer;
    the decode-size one up to N tokens with LP_JAX_MOE_DECODE_MAX_TOKENS=N), for the notes' profile."""
    from jax.experimental.mosaic.gpu import profiler
    E, K, D, F, act, bias = MODELS[name]
    ex = random_experts(jax.random.key(7), E, D, F, bias)
    x, w, ids = make_sets(jax.random.key(T), T, D, E, K)[0]
    fn = jax.jit(functools.partial(moe_experts, activation=act, backend="pallas"))
    jax.block_until_ready(fn(x, w, ids, ex))
    _, kernels = profiler.measure(fn, aggregate=False)(x, w, ids, ex)
    log(f"breakdown {name} T={T} ({moe_path(T, D, F, 'pallas')} path): total {sum(t for _, t in kernels):.4f} ms")
    for k, t in kernels:
        log(f"    {t:9.4f} ms  {k[:110]}")
    return kernels


PEERS = ("vllm_fused_moe", "torch_grouped_mm", "ragged_dot_mgpu", "lax_ragged_dot")
PEER_NAMES = {"vllm_fused_moe": "vLLM fused_moe (Triton)", "torch_grouped_mm": "torch._grouped_mm (CUDA graph)",
              "ragged_dot_mgpu": "ragged_dot_mgpu", "lax_ragged_dot": "lax.ragged_dot"}


def ceilings_line(ceil) -> str:
    """The ceilings sentence of a table: best method, datasheet ratios ("datasheet unknown" for a
    device without datasheet peaks)."""
    return (f"Ceilings (same run): copy {ceil['copy_Bps'] / 1e12:.2f} TB/s read+write "
            f"(best of {ceil.get('copy_method', '?')} and the other methods, {ratio_text(ceil, 'copy_Bps')}), "
            f"bf16 matmul {ceil['matmul_flops'] / 1e12:.0f} TFLOP/s ({ceil.get('matmul_method', '?')}, "
            f"{ratio_text(ceil, 'matmul_flops')}).")


def decode_path_line(decode_limit: int) -> str:
    """What a table says about our opt-in decode-size layer: measured up to which size, or not."""
    if decode_limit:
        return (f"Our decode path (`moe_decode.py`, opt-in: LP_JAX_MOE_DECODE_MAX_TOKENS={decode_limit}): measured "
                f"beside ours up to {decode_limit} tokens ('-' above); x = its time / ours (<1: the decode path "
                "is faster), /floor = its time / the floor. The engine runs it only with that variable set.")
    return ("Our decode path (`moe_decode.py`, opt-in): not measured in this run (LP_JAX_MOE_DECODE_MAX_TOKENS "
            "unset or 0, as the engine runs by default); set it to N in [1, 64] to measure it beside ours up to "
            "N tokens.")


def markdown(rows, ceil, device, peers=PEERS, decode_limit=0):
    def f(v, nd=3):
        return "-" if v is None else f"{v:.{nd}f}"

    decode_head, decode_rule = ("our decode path ms (x, /floor) | ", " ---: |") if decode_limit else ("", "")
    lines = [f"# MoE layer, {device}, {rows[0]['date'] if rows else ''}", "",
             ceilings_line(ceil) + " Times: ms per layer call, device-synchronised, median. "
             "Ours: the grouped layer (`moe.py`), what the engine runs by default. "
             "x = that peer's time / ours (>1: ours faster). GB/s = active-expert weight bytes / our time. "
             "Peers run in the same process on the same inputs; each row's JSON has its configuration "
             "and relative error against the float32 reference.", "",
             decode_path_line(decode_limit), "",
             f"Our tiles: {moe_tuning.TABLE.describe_device(device)} (per row: the JSON's `tiles`).", "",
             "| model | tokens | ours ms | TFLOP/s | GB/s (experts) | floor ms (kind) | ours/floor | "
             + decode_head + "best peer (x) | " + " | ".join(f"{PEER_NAMES[p]} ms (x)" for p in peers) + " |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + decode_rule + " --- |" + " ---: |" * len(peers)]
    for r in rows:
        def peer(p, extra=""):
            t = r.get(f"{p}_ms")
            s = r.get(f"speedup_vs_{p}")
            return ("null" if f"{p}_error" in r else "-") if t is None else f"{t:.3f} ({f(s, 2)}x{extra})"
        best = (f"{PEER_NAMES[r['best_peer']]} ({f(r.get('speedup_vs_best_peer'), 2)}x)"
                if r.get("best_peer") else "-")
        decode = (peer("pallas_decode", f", {f(r.get('pallas_decode_over_floor'), 2)}") + " | "
                  if decode_limit else "")
        lines.append(
            f"| {r['model']} | {r['tokens']} | {f(r.get('ours_ms'))} | {f(r.get('ours_tflops'), 0)} "
            f"| {f(r.get('ours_GBps'), 0)} | {f(r['floor_ms'])} ({r['floor_kind']}) "
            f"| {f(r.get('ours_over_floor'), 2)} | {decode}{best} | " + " | ".join(peer(p) for p in peers) + " |")
    lines.append("")
    lines.append("null = the peer failed (the JSON says why). tokamax: not installed on the GPU machine, "
                 "not measured.")
    return "\n".join(lines) + "\n"


def _int_list(text: str, what: str, lo: int, hi: int) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: comma-separated integers, got {text!r}") from None
    if not values or any(not lo <= v <= hi for v in values):
        raise argparse.ArgumentTypeError(f"{what}: integers in [{lo}, {hi}], got {text!r}")
    return values


def _names(text: str, what: str, valid) -> list[str]:
    names = [t for t in text.split(",") if t]
    bad = [n for n in names if n not in valid]
    if bad:
        raise argparse.ArgumentTypeError(f"{what}: unknown {bad}; choose from {', '.join(valid)}")
    return names


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), type=lambda t: _names(t, "--models", MODELS),
                    help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)),
                    type=lambda t: _int_list(t, "--tokens", 1, 1 << 17), help="token counts per layer call")
    ap.add_argument("--peers", default="vllm_fused_moe,torch_grouped_mm,ragged_dot_mgpu,lax_ragged_dot",
                    type=lambda t: _names(t, "--peers", PEERS),
                    help=f"comma-separated, from {', '.join(PEERS)} (empty: ours only)")
    ap.add_argument("--reps", type=int, default=30, help="timed runs per case (median reported)")
    ap.add_argument("--ceilings", help="ceilings JSON of this run (kernel_ceilings.py --out); default: measure them")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--breakdown", action="store_true",
                    help="only print the per-kernel time of our layer for --models x --tokens")
    ap.add_argument("--once", action="store_true",
                    help="only run the layer the engine runs (as --breakdown) twice per --models x --tokens (a target for ncu)")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps must be >= 1, got {args.reps}")
    try:
        args.decode_limit = moe_decode_max_tokens()
    except ValueError as e:
        ap.error(str(e))
    return args


def load_ceilings(path: str | None, reps: int = 10) -> dict:
    """The ceilings JSON written earlier in this run, or freshly measured ones."""
    if path:
        with open(path) as fh:
            return json.load(fh)
    return ceilings(reps)


def main(argv=None):
    args = parse_args(argv)
    device = jax.devices()[0].device_kind
    slug = device_slug(device)
    os.makedirs(args.out_dir, exist_ok=True)

    def log(s):
        print(s, flush=True)

    if args.breakdown or args.once:
        for name in args.models:
            for T in args.tokens:
                if args.breakdown:
                    breakdown(name, T, log)
                    continue
                E, K, D, F, act, bias = MODELS[name]
                ex = random_experts(jax.random.key(7), E, D, F, bias)
                x, w, ids = make_sets(jax.random.key(T), T, D, E, K)[0]
                fn = jax.jit(functools.partial(moe_experts, activation=act, backend="pallas"))
                for _ in range(2):
                    jax.block_until_ready(fn(x, w, ids, ex))
        return 0

    ceil = load_ceilings(args.ceilings)
    log(summary(ceil))
    rows = []

    def save(model_rows):
        with open(os.path.join(args.out_dir, f"moe_{slug}.json"), "w") as fh:
            json.dump(rows + model_rows, fh, indent=1)
    for name in args.models:
        rows += bench_model(name, args.tokens, ceil, args.peers, args.reps, log, save, args.decode_limit)
    md = markdown(rows, ceil, device, args.peers, args.decode_limit)
    with open(os.path.join(args.out_dir, f"moe_{slug}.md"), "w") as fh:
        fh.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
