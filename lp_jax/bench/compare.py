"""Compare schedules: every configuration x every rate, one results folder.

    OUT/compare.json          what was asked (model, configurations, rates, workload, SLO)
    OUT/runs/<label>-rate<r>/ requests.jsonl + summary.json of each run (as `lp-jax bench` writes them)
    OUT/summary.csv           one row per run, every metric
    OUT/results.md            the table, the highest rate within the SLO, the plots
    OUT/plots/*.png           see lp_jax.bench.plots

A configuration is a schedule and its engine options, written "SCHEDULE[:KEY=VALUE]..." (for
example "chunked:token_budget=512" or "layered:group_rule=pow2"); it is also its label.

Defaults come in two sizes: the embedded demo for the tiny presets (CPU-sized engine, prompts
and outputs scaled down, a few short runs: `lp-jax compare` with no arguments finishes in a
few minutes on two cores), and full size for everything else.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import json
import os
import re
from dataclasses import dataclass, field

from lp_jax.bench.metrics import goodput_text, max_rate_meeting_slo
from lp_jax.bench.plots import FIGURES, write_plots
from lp_jax.bench.runner import BenchResult, make_llm, prepare_out_dir, run_bench, write_bench
from lp_jax.bench.workload import make_workload
from lp_jax.engine.config import EngineConfig, check_removed_options


@dataclass(frozen=True)
class Defaults:
    """What an option left unset becomes. Bounds in seconds, rates in requests/s."""

    configs: tuple[str, ...]
    rates: tuple[float, ...]
    num_requests: int
    length_scale: float
    engine_options: dict = field(default_factory=dict)
    ttft_bound_s: float = 5.0
    tbt_bound_s: float = 0.1
    warmup: int = 4


# Tiny models on the CPU: ShareGPT lengths / 16 (prompt mean ~146, output ~27 tokens), a
# 512-token context, 16 running requests, and one short row-bucket ladder shared by both
# schedules (the hidden-state buffer is sized alike too: max_prefill_tokens = max_cohort_tokens =
# 512 for both, see EngineConfig.hidden_rows), so their executables are compiled once.
# group_tokens and token_budget of 64 are the full-size 512 scaled like the lengths (chunked's
# budget must exceed max_num_seqs).
DEMO = Defaults(
    configs=("layered:group_tokens=64", "chunked:token_budget=64"),
    rates=(4.0, 8.0, 16.0), num_requests=48, length_scale=1 / 16,
    engine_options=dict(max_num_seqs=16, max_model_len=512, max_prefill_tokens=512, max_cohort_tokens=512,
                        row_buckets=(16, 64, 160, 528)),
    ttft_bound_s=0.5, tbt_bound_s=0.1, warmup=4)

# Full-size models (the H100 comparison: layered vs chunked-512). The rates and SLO
# bounds are starting points; set them for the device at hand.
FULL = Defaults(configs=("layered", "chunked:token_budget=512"), rates=(1.0, 2.0, 4.0), num_requests=200,
                length_scale=1.0, ttft_bound_s=5.0, tbt_bound_s=0.1, warmup=4)


def defaults_for(model: str) -> Defaults:
    """DEMO for the tiny presets (and checkpoint folders named tiny-*), FULL otherwise."""
    return DEMO if os.path.basename(os.path.normpath(str(model))).startswith("tiny-") else FULL


# --- configurations ---------------------------------------------------------------------------
ENGINE_OPTIONS = {f.name: f.type for f in dataclasses.fields(EngineConfig) if f.name != "schedule"}


def parse_option(text: str) -> tuple[str, object]:
    """"KEY=VALUE" -> (key, value typed as EngineConfig declares it). ValueError naming the problem."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
        raise ValueError(f"engine option {text!r}: expected KEY=VALUE")
    check_removed_options([key])
    if key not in ENGINE_OPTIONS:
        raise ValueError(f"unknown engine option {key!r}; known: {', '.join(ENGINE_OPTIONS)}")
    kind, raw = ENGINE_OPTIONS[key], raw.strip()
    if "None" in kind and raw.lower() == "none":
        return key, None
    try:
        if kind.startswith("tuple"):
            return key, tuple(int(x) for x in raw.split(",") if x.strip())
        if kind.startswith("int"):
            return key, int(raw)
        if kind.startswith("float"):
            return key, float(raw)
    except ValueError:
        want = "comma-separated integers" if kind.startswith("tuple") else kind.split(" ")[0]
        raise ValueError(f"engine option {key}: expected {want}, got {raw!r}") from None
    return key, raw


@dataclass(frozen=True)
class Config:
    """One configuration: label, schedule and its engine options."""

    label: str
    schedule: str
    options: dict

    @property
    def slug(self) -> str:
        """The label as a folder name."""
        return re.sub(r"[^A-Za-z0-9.-]+", "_", self.label.replace("=", "-"))


def parse_config(spec: str, common: dict) -> Config:
    """"SCHEDULE[:KEY=VALUE]..." on top of the common engine options. ValueError (unknown
    schedule, option or value) before anything runs: the EngineConfig is built to check it."""
    name, *opts = spec.split(":")
    options = dict(common)
    options.update(parse_option(o) for o in opts)
    EngineConfig(schedule=name, **options)
    return Config(spec, name, options)


def parse_rate(text: str) -> float:
    """A request rate: a number > 0 (requests/s) or "inf" (everything at once)."""
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not rate > 0:
        raise ValueError(f"bad rate {text!r}: expected a number of requests/s > 0, or inf")
    return rate


# --- running ----------------------------------------------------------------------------------
@dataclass
class CompareSpec:
    """Everything one comparison runs. workload: make_workload's keywords except rate and
    context_limit (set per rate and from the engines' context)."""

    model: str
    configs: list[Config]
    rates: list[float]
    workload: dict
    ttft_bound_s: float
    tbt_bound_s: float
    warmup: int
    slo_target: float = 0.9
    goodput_slo_ms: dict | None = None  # vLLM's --goodput bounds (ms); None: TTFT and TPOT at the SLO bounds


def run_compare(spec: CompareSpec, out_dir: str, progress: bool = True, log=print) -> list[BenchResult]:
    """Run every configuration at every rate and write the folder described in the module doc."""
    prepare_out_dir(out_dir)
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(dataclasses.asdict(spec), f, indent=2)
    results = []
    workloads = None
    for config in spec.configs:
        llm = make_llm(spec.model, config.schedule, config.options, config.label, progress, log)
        if workloads is None:
            # The same requests for every configuration: the shortest context of them all.
            limit = min(EngineConfig(schedule=c.schedule, **c.options).model_len(llm.model_config) for c in spec.configs)
            workloads = {rate: make_workload(rate=rate, context_limit=limit, **spec.workload) for rate in spec.rates}
        for rate in spec.rates:
            result = run_bench(llm, workloads[rate], ttft_bound_s=spec.ttft_bound_s, tbt_bound_s=spec.tbt_bound_s,
                               label=config.label, warmup=spec.warmup, progress=progress,
                               goodput_slo_ms=spec.goodput_slo_ms)
            write_bench(result, os.path.join(out_dir, "runs", f"{config.slug}-rate{rate:g}"))
            s = result.summary
            log(f"[{config.label}] {rate:g} req/s: {s['num_finished']}/{s['num_requests']} finished in "
                f"{s['duration_s']:.1f} s, SLO attainment {100 * s['slo_attainment']:.0f}%")
            results.append(result)
        # Free this engine's weights and KV pool (sized from free GPU memory) before the next one.
        del llm
        gc.collect()
    write_summary_csv(results, os.path.join(out_dir, "summary.csv"))
    write_plots(results, os.path.join(out_dir, "plots"))
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown_report(spec, results))
    return results


# --- reporting --------------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[prefix + k] = v
    return out


def write_summary_csv(results: list[BenchResult], path: str) -> None:
    """One row per run: every scalar of its summary, nested keys joined by dots."""
    rows = [_flatten(r.summary) for r in results]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _num(x, scale: float = 1.0, fmt: str = ".3g") -> str:
    return "n/a" if x is None else format(x * scale, fmt)


def expert_ratio_lines(spec: CompareSpec, results: list[BenchResult]) -> list[str]:
    """Expert bytes per request of each configuration relative to the first one, at each rate,
    both ways (the paper's headline: layered / chunked-512)."""
    if len(spec.configs) < 2:
        return []
    base = spec.configs[0].label
    by = {(r.summary["label"], r.summary["workload"]["rate"]): r.summary for r in results}
    lines = ["", f"Expert bytes per request relative to {base} (distinct / streamed):", ""]
    for config in spec.configs[1:]:
        cells = []
        for rate in spec.rates:
            a, b = by.get((config.label, rate)), by.get((base, rate))
            if a and b and b["expert_bytes_per_request"] and b["expert_streamed_bytes_per_request"]:
                cells.append(f"{rate:g} req/s {a['expert_bytes_per_request'] / b['expert_bytes_per_request']:.3f} / "
                             f"{a['expert_streamed_bytes_per_request'] / b['expert_streamed_bytes_per_request']:.3f}")
        lines.append(f"- {config.label} / {base}: " + ("; ".join(cells) if cells else "n/a (no expert traffic)"))
    return lines


def markdown_report(spec: CompareSpec, results: list[BenchResult]) -> str:
    """results.md: where and what was run, the table, the highest rate within the SLO, plots."""
    s0 = results[0].summary
    w = s0["workload"]
    lines = [
        f"# lp-jax compare: {s0['model']} on {s0['device']['name']} ({s0['device']['platform']})",
        "",
        f"- date {s0['date']}, jax {s0['jax_version']}",
        f"- workload: {w['source']} x {w['num_requests']} requests, {w['arrival']} arrivals"
        + (f" (cv {w['cv']:g})" if w["arrival"] == "gamma" else "")
        + f", lengths x{w['length_scale']:g}, context {w['context_limit']} tokens ({w['context_policy']} longer), "
        f"seed {w['seed']}; {s0['warmup_requests']} warm-up requests before each run, not measured",
        f"- SLO: TTFT <= {spec.ttft_bound_s:g} s and every gap between tokens <= {spec.tbt_bound_s * 1e3:g} ms; "
        f"goodput (vLLM's): finished requests per second with {goodput_text(s0['goodput_slo_ms'])}; throughputs "
        "and expert GB per request count finished requests",
        f"- routing: {s0['options'].get('routing', 'uniform')}; expert traffic two ways: distinct = distinct experts "
        "loaded per layer x bytes per expert (the paper's metric), streamed = row tiles the grouped matmul streams "
        "(an expert's weights once per tile of block_m rows, as the Pallas kernels tile them on this device) x bytes "
        "per expert; 1 GB = 1e9 bytes",
        "",
        "| configuration | rate (req/s) | finished | TTFT mean / p99 (s) | TBT p50 / p99 (ms) | TPOT mean (ms) "
        "| E2E mean (s) | output tok/s | SLO attainment | goodput (req/s) | expert GB / request: distinct / streamed "
        "| expert MB / iteration: distinct / streamed | mJ / token above idle (raw) "
        "| mJ / output token above idle (raw) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary
        lines.append(
            f"| {s['label']} | {s['workload']['rate']:g} | {s['num_finished']}/{s['num_requests']} "
            f"| {_num(s['ttft_s']['mean'])} / {_num(s['ttft_s']['p99'])} "
            f"| {_num(s['tbt_s']['p50'], 1e3)} / {_num(s['tbt_s']['p99'], 1e3)} | {_num(s['tpot_s']['mean'], 1e3)} "
            f"| {_num(s['e2e_s']['mean'])} | {_num(s['throughput_tok_s'], 1, '.1f')} "
            f"| {100 * s['slo_attainment']:.0f}% | {_num(s['request_goodput_per_s'])} "
            f"| {_num(s['expert_bytes_per_request'], 1e-9, '.4g')} / "
            f"{_num(s['expert_streamed_bytes_per_request'], 1e-9, '.4g')} "
            f"| {_num(s['expert_bytes_per_iteration'], 1e-6, '.4g')} / "
            f"{_num(s['expert_streamed_bytes_per_iteration'], 1e-6, '.4g')} "
            f"| {_num(s['energy_mj_per_token_above_idle'])} ({_num(s['energy_mj_per_token'])}) "
            f"| {_num(s['energy_mj_per_output_token_above_idle'])} ({_num(s['energy_mj_per_output_token'])}) |")
    lines += expert_ratio_lines(spec, results)
    lines += ["", f"Highest measured rate with SLO attainment >= {100 * spec.slo_target:.0f}% at it and every lower "
              "rate:", ""]
    for config in spec.configs:
        runs = [r.summary for r in results if r.summary["label"] == config.label]
        best = max_rate_meeting_slo([s["workload"]["rate"] for s in runs], [s["slo_attainment"] for s in runs],
                                    spec.slo_target)
        lines.append(f"- {config.label}: " + (f"{best:g} requests/s" if best is not None else "none of the rates"))
    if s0["energy_j"] is None:
        lines += ["", f"Energy not measured: {s0['energy_reason']}."]
    else:
        idle = ", ".join(f"{_num(r.summary['energy_idle_w'], 1, '.1f')} W" for r in results)
        lines += ["", "Energy above idle subtracts the GPU's power at rest, measured over an idle window just "
                  f"before each run (engine loaded, nothing in flight: {idle}), times the run's length; raw is "
                  "everything the GPU drew."]
    if s0["device"]["platform"] == "cpu":
        lines += ["", "On the CPU, per-call overheads dominate and no weights stream from GPU memory, so these "
                  "latencies say little about a GPU; the expert-traffic column counts bytes and does not depend "
                  "on the device."]
    lines += ["", "Plots:", ""] + [f"![{name}](plots/{name})" for name in FIGURES] + [""]
    return "\n".join(lines)
