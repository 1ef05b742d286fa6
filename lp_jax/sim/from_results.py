"""Cost tables derived from the committed H100 benchmark results (provenance "derived"), and tables
for devices never run, from their datasheets (provenance "datasheet").

The H100 results (benchmarks/results/, 2026-11-27) hold three kinds of timings, used in two stages:

1. components, one layer: the grouped MoE kernels at 1-16384 tokens (moe_h100_*.json, distinct
   experts measured) and the paged-attention kernel alone (attention_h100_*.json, CUPTI kernel
   time) fix the expert and attention efficiencies (`fit_roofline`; their fixed costs are left
   to the whole iterations);
2. whole iterations (engine_h100_*.json: decode at batch 1-128, an 8192-token prefill, a layered
   and a chunked mixed iteration, each launched back to back) fix the per-call and per-layer
   times, the dense efficiencies and the sampling call, with the component efficiencies held.

The host constants come from the same engine cases: row building (host_prepare_ms) against the
decode batch, and the launch time of the smallest case per call (an upper bound: the launch call
can block on the device). The read-back is not measured there and is set to READBACK_S.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os

import numpy as np

from lp_jax.model.config import GPT_OSS_20B, QWEN3_30B_A3B, ModelConfig, get_preset
from lp_jax.engine.config import bucket_for
from lp_jax.engine.executor import layer_pieces
from lp_jax.sim.cost_model import CostTable, DeviceParams, HostParams, Peaks, source_commit, table_file
from lp_jax.sim.expert_load import UniformExpertLoad
from lp_jax.sim.fit import error_summary, fit_device, fit_roofline
from lp_jax.sim.work import WorkModel, kernel_block_m

H100 = "NVIDIA H100 80GB HBM3"
H100_SLUG = "h100_80gb_hbm3"
GIB = 2**30
# What JAX could use on the H100 runs: XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 of its 79.2 GiB.
H100_MEMORY = int(0.95 * 79.2 * GIB)
READBACK_S = 5e-5  # assumed: a few hundred bytes device -> host plus a synchronisation
RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "results")
MODEL_OF_SHAPE = {"qwen3_30b_a3b": QWEN3_30B_A3B, "gpt_oss_20b": GPT_OSS_20B, "qwen3": QWEN3_30B_A3B,
                  "gpt_oss": GPT_OSS_20B}
ROUNDS = 4
DEVICE_FITTED = ("call_s", "layer_s", "row_s", "dense_bw", "dense_flop", "head_s", "overlap")

# Datasheet peaks (dense bf16 FLOP/s, HBM bytes/s) of the devices tables may be written for.
DATASHEETS = {
    "h100": dict(kind=H100, matmul_flops=989e12, hbm_Bps=3.35e12, memory_gib=80,
                 source="NVIDIA H100 SXM5 datasheet: 989 TFLOP/s dense BF16, 3.35 TB/s HBM3, 80 GB"),
    "h200": dict(kind="NVIDIA H200", matmul_flops=989e12, hbm_Bps=4.8e12, memory_gib=141,
                 source="NVIDIA H200 SXM datasheet: 989 TFLOP/s dense BF16, 4.8 TB/s HBM3e, 141 GB"),
    "b200": dict(kind="NVIDIA B200", matmul_flops=2250e12, hbm_Bps=8.0e12, memory_gib=180,
                 source="NVIDIA B200 (DGX B200) datasheet: 2.25 PFLOP/s dense BF16, 8 TB/s HBM3e, 180 GB"),
}


def _load(name: str, results: str):
    with open(os.path.join(results, name)) as f:
        return json.load(f)


def _work(model: ModelConfig, page_slots: int = 1) -> WorkModel:
    load = UniformExpertLoad(model.num_experts, model.num_experts_per_tok)
    return WorkModel(model, 2, "pallas", page_slots, load, kernel_block_m(model, H100))


def _peaks(entry: dict) -> Peaks:
    return Peaks(float(entry["copy_Bps"]), float(entry["matmul_flops"]))


def expert_efficiencies(model: ModelConfig, results: str, peaks: Peaks, overlap: float) -> tuple[float, float]:
    """(expert_bw, expert_flop) relative to `peaks`, from the MoE layer timings of this model's shape
    (roof's p held at `overlap`)."""
    rows = [r for r in _load(f"moe_{H100_SLUG}.json", results) if MODEL_OF_SHAPE[r["model"]] is model]
    work = _work(model)
    b, f, _ = zip(*[work.expert_work(r["tokens"], r["tokens"], r["tokens"], (), r["distinct_experts"]) for r in rows])
    run = _peaks(rows[0])
    _, e_bw, e_flop, _ = fit_roofline(np.array(b), np.array(f), np.array([r["ours_ms"] * 1e-3 for r in rows]), run,
                                      overlap)
    return e_bw * run.copy_Bps / peaks.copy_Bps, e_flop * run.matmul_flops / peaks.matmul_flops


def _attention_case(model: ModelConfig, r: dict) -> tuple[list[int], list[tuple[int, int]], str]:
    """(decode contexts, prefill ranges, layer type) of one attention benchmark case."""
    if r["kind"] == "decode":
        return [r["context"]] * r["batch"], [], "full"
    if r["kind"] == "prefill":
        n = r["tokens"] // r["sequences"]
        return [], [(0, n)] * r["sequences"], "sliding" if r.get("window") else "full"
    if r["case"].startswith("mixed chunked"):
        return [2048] * 64, [(2048, 2560)], "full"
    return [2048] * 64, [(0, 2048)] * 4, "full"


def attention_efficiencies(model: ModelConfig, results: str, peaks: Peaks, overlap: float) -> tuple[float, float]:
    """(attn_bw, attn_flop) relative to `peaks`, from the attention kernel's own time (CUPTI) in the
    cases of this model's shape (decode and mixed cases have the Qwen3 shape, whose K/V per token
    equals GPT-OSS's)."""
    rows = [r for r in _load(f"attention_{H100_SLUG}.json", results)
            if r.get("ours_kernel_ms") and (r["kind"] != "prefill" or MODEL_OF_SHAPE[r["model"]] is model)]
    if model.sliding_window != 128:
        rows = [r for r in rows if not r.get("window")]
    work = _work(model)
    feats = []
    for r in rows:
        ctx, prefills, kind = _attention_case(model, r)
        w = work.layer_works(len(ctx) + sum(e - s for s, e in prefills), ctx, prefills)
        w = w.get(kind, w["full"])
        feats.append((w.attn_bytes, w.attn_flops))
    b, f = map(np.array, zip(*feats))
    run = _peaks(rows[0])
    _, e_bw, e_flop, _ = fit_roofline(b, f, np.array([r["ours_kernel_ms"] * 1e-3 for r in rows]), run, overlap)
    return e_bw * run.copy_Bps / peaks.copy_Bps, e_flop * run.matmul_flops / peaks.matmul_flops


def _step_sample(work: WorkModel, lo: int, n: int, rows: int, ctx, prefills, distinct: float) -> dict:
    works = work.layer_works(rows, ctx, prefills, distinct=distinct)
    return dict(kind="step", layers=work.layer_counts(lo, n), work={t: w._asdict() for t, w in works.items()},
                range=n != work.model.num_layers, seconds=0.0)


def _head_sample(work: WorkModel, rows: int) -> dict:
    return dict(kind="head", rows=rows, head_bytes=work.head_bytes, head_flops_per_row=work.head_flops_per_row,
                seconds=0.0)


def iteration_samples(model: ModelConfig, engine: dict) -> list[dict]:
    """One "iteration" sample per engine case (device_ms: the prepared iteration back to back),
    with the distinct experts the engine measured in it."""
    work, L = _work(model), model.num_layers
    buckets = tuple(engine["row_buckets"])
    seq_buckets = tuple(b for b in (8, 16, 32, 64, 128) if b <= 128)
    per_layer = lambda gb: gb * 1e9 / (L * work.expert_bytes_each) if model.is_moe else 0.0  # noqa: E731
    decode64 = next(c for c in engine["cases"] if c["case"] == "decode B=64")
    out = []
    for c in engine["cases"]:
        if "device_ms" not in c or c.get("error"):
            continue
        name = c["case"]
        calls, sampled = [], 0
        if name.startswith("decode"):
            B = c["batch"]
            calls.append(_step_sample(work, 0, L, bucket_for(B, buckets), [c["context"]] * B, [], per_layer(c["expert_GB"])))
            sampled = B
        elif name.startswith("prefill"):
            calls.append(_step_sample(work, 0, L, bucket_for(c["tokens"], buckets), [], [(0, c["tokens"])],
                                      per_layer(c["expert_GB"])))
            sampled = 1
        elif name == "layered mixed":
            lo, hi = c["group_layers"]
            n, P, D = c["cohort_prompts"], c["prefill_tokens"], 64
            prefills = [(0, P // n)] * n
            dec_d = per_layer(decode64["expert_GB"])
            mixed_d = (c["expert_GB"] * 1e9 / work.expert_bytes_each - dec_d * (L - (hi - lo))) / (hi - lo)
            for a, b, ctx, pre, d in ((0, lo, [c["context"]] * D, [], dec_d), (lo, hi, [c["context"]] * D, prefills,
                                      mixed_d), (hi, L, [c["context"]] * D, [], dec_d)):
                rows = bucket_for(len(ctx) + sum(e - s for s, e in pre), buckets)
                calls += [_step_sample(work, p, k, rows, ctx, pre, d) for p, k in layer_pieces(a, b, L)]
            sampled = D
        elif name == "chunked mixed":
            s, e = c["chunk"]
            calls.append(_step_sample(work, 0, L, bucket_for(64 + e - s, buckets), [c["context"]] * 64, [(s, e)],
                                      per_layer(c["expert_GB"])))
            sampled = 64
        else:
            continue
        out.append(dict(kind="iteration", case=name, calls=calls, head=_head_sample(work, bucket_for(sampled, seq_buckets)),
                        seconds=c["device_ms"] * 1e-3))
    return out


def host_params(engine: dict) -> HostParams:
    """Row building against the decode batch (host_prepare_ms), the smallest case's launch time per
    call, READBACK_S."""
    dec = [c for c in engine["cases"] if c["case"].startswith("decode")]
    B = np.array([c["batch"] for c in dec], float)
    prep = np.array([c["host_prepare_ms"] for c in dec]) * 1e-3
    slope, intercept = np.polyfit(B, prep, 1)
    prefill = next(c for c in engine["cases"] if c["case"].startswith("prefill"))
    first = min(dec, key=lambda c: c["batch"])
    return HostParams(step_s=float(max(intercept, 0.0)), decode_s=float(max(slope, 0.0)),
                      prefill_s=float(max(prefill["host_prepare_ms"] * 1e-3 - intercept, 0.0)),
                      launch_s=first["host_launch_ms"] * 1e-3 / (first["step_calls"] + 1), readback_s=READBACK_S)


def derive_h100_table(model_name: str, results: str = RESULTS) -> CostTable:
    """The H100 cost table of qwen3-30b-a3b or gpt-oss-20b, from the committed H100 results."""
    model = get_preset(model_name)
    engine = _load(f"engine_{H100_SLUG}.json", results)["models"][model_name]
    peaks = Peaks(**engine["ceilings"])
    source = (f"derived from the H100 results of {engine['date']} (engine_{H100_SLUG}.json: the {model_name} engine "
              f"cases, device_ms; moe_{H100_SLUG}.json and attention_{H100_SLUG}.json: the expert and attention "
              "efficiencies), not from a calibration run; host launch from the smallest case, read-back assumed")
    table = CostTable(model=model_name, device="h100", device_kind=H100, provenance="derived", backend="pallas",
                      dtype=engine["dtype"], memory_bytes=H100_MEMORY, peaks=peaks,
                      device_params=DeviceParams(call_s=2e-4, layer_s=5e-5, row_s=1e-9, head_s=5e-5),
                      host=host_params(engine), source=source, date=datetime.date.today().isoformat(),
                      commit=source_commit(), kernel_tiles_device=H100)
    samples = iteration_samples(model, engine)
    # The component fits hold roof's p at the whole-iteration fit's, which holds their
    # efficiencies: alternate until p settles.
    overlap = 4.0
    for _ in range(ROUNDS):
        e_bw, e_flop = expert_efficiencies(model, results, peaks, overlap)
        a_bw, a_flop = attention_efficiencies(model, results, peaks, overlap)
        p = dataclasses.replace(table.device_params, expert_bw=e_bw, expert_flop=e_flop, attn_bw=a_bw, attn_flop=a_flop,
                                overlap=overlap)
        table = table.with_params(device_params=fit_device(table.with_params(device_params=p), samples, DEVICE_FITTED))
        overlap = table.device_params.overlap
    grid = dict(cases=[s["case"] for s in samples], components="moe: 1-16384 tokens; attention: decode, prefill, mixed")
    return table.with_params(samples=samples, fit=dict(grid=grid, **error_summary(table, samples)))


def datasheet_table(base: CostTable, device: str) -> CostTable:
    """A table for `device` (a DATASHEETS key) never run: `base`'s efficiencies and fixed times, the
    peaks scaled by the datasheets' ratio (so that a measured base keeps its measured-to-datasheet
    gap), the memory from the datasheet. Provenance "datasheet"."""
    new, old = DATASHEETS[device], DATASHEETS[base.device]
    peaks = Peaks(base.peaks.copy_Bps * new["hbm_Bps"] / old["hbm_Bps"],
                  base.peaks.matmul_flops * new["matmul_flops"] / old["matmul_flops"])
    source = (f"datasheet table, never run on this device: {new['source']}; peaks = {base.name}'s measured peaks x "
              f"the datasheet ratios; efficiencies, fixed times and host from {base.name} ({base.provenance})")
    return base.with_params(device=device, device_kind=new["kind"], provenance="datasheet", peaks=peaks,
                            memory_bytes=int(0.95 * new["memory_gib"] * 1e9), source=source, name="",
                            date=datetime.date.today().isoformat(), commit=source_commit(), samples=[],
                            fit=dict(note=f"no fit on this device; {base.name}'s fit: {base.fit}"))


def write_h100_tables(results: str = RESULTS, datasheet_devices=("h200", "b200")) -> list[str]:
    """Write the derived H100 tables of both models and the datasheet tables built on them."""
    paths = []
    for name in ("qwen3-30b-a3b", "gpt-oss-20b"):
        table = derive_h100_table(name, results)
        paths.append(table.save(table_file("h100", name)))
        for device in datasheet_devices:
            paths.append(datasheet_table(table, device).save(table_file(device, name)))
    return paths


def transferred_table(base: CostTable, model: ModelConfig) -> CostTable:
    """A table for `model` on `base`'s device, never timed with that model: `base`'s peaks,
    efficiencies, fixed times and host constants (each term is bytes / bandwidth or FLOPs / rate,
    so the work of the other model's calls carries over; what does not is how well its own matmul
    shapes reach the efficiencies fitted on `base`'s). Provenance "derived"; its source says from
    what, and its fit is empty (there is nothing of this model to compare with)."""
    source = (f"transferred, never timed with {model.name}: peaks, efficiencies, fixed times and host from "
              f"{base.name} ({base.provenance}, {base.date}); {model.name}'s work from its config")
    return base.with_params(model=model.name, provenance="derived", source=source, name="",
                            date=datetime.date.today().isoformat(), commit=source_commit(), samples=[],
                            fit=dict(note=f"no fit for {model.name}; {base.name}'s fit: {base.fit.get('error', base.fit)}"))
