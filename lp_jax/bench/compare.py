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
import json
import os
import re
from dataclasses import dataclass, field

from lp_jax.bench.interleave import Spread, aggregate, interleaved_order, spread_columns
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


# The paper's comparison at full size, through the simulator: what `lp-jax compare` with no
# arguments shows beside the tiny real run. Qwen3-30B-A3B on arXiv-long under the paper's
# calibrated routing (qwen3-paper), layered vs chunked-512, the paper's SLO for it (TTFT 10 s,
# every gap 125 ms), rates bracketing both knees on the preferred cost table (found in the
# simulator on the measured H200 table: chunked-512 falls below 90 % attainment between 1.2 and
# 1.3 requests/s, layered between 1.3 and 1.4).
PAPER_SIMULATED = dict(model="qwen3-30b-a3b", workload="arxiv-long", executor="sim", routing="qwen3-paper",
                       defaults=Defaults(configs=("layered", "chunked:token_budget=512"),
                                         rates=(1.0, 1.2, 1.3, 1.4, 1.6), num_requests=200, length_scale=1.0,
                                         ttft_bound_s=10.0, tbt_bound_s=0.125, warmup=0))


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
    if kind == "bool":
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"engine option {key}: expected true or false, got {raw!r}")
        return key, raw.lower() == "true"
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
    context_limit (set per rate and from the engines' context). order, order_seed, repeats: see
    lp_jax.bench.interleave (every configuration at every rate, `repeats` times, rate-major)."""

    model: str
    configs: list[Config]
    rates: list[float]
    workload: dict
    ttft_bound_s: float
    tbt_bound_s: float
    warmup: int
    slo_target: float = 0.9
    goodput_slo_ms: dict | None = None  # vLLM's --goodput bounds (ms); None: TTFT and TPOT at the SLO bounds
    repeats: int = 1
    order: str = "alternate"
    order_seed: int = 0
    executor: str = "model"


def run_dir_name(config: Config, rate: float, repeat: int, repeats: int) -> str:
    """runs/ subfolder of one run: <slug>-rate<r>, with -rep<k> when runs are repeated."""
    return f"{config.slug}-rate{rate:g}" + (f"-rep{repeat}" if repeats > 1 else "")


def engine_configs(configs: list[Config]) -> list[EngineConfig]:
    return [EngineConfig(schedule=c.schedule, **c.options) for c in configs]


def run_compare(spec: CompareSpec, out_dir: str, progress: bool = True, log=print) -> list[BenchResult]:
    """Run every configuration at every rate, interleaved (lp_jax.bench.interleave), on one engine
    whose schedule is switched between runs (the same weights and executables for all), and
    write the folder described in the module doc. Results in configuration, rate, repeat order."""
    prepare_out_dir(out_dir)
    order = interleaved_order({i: spec.rates for i in range(len(spec.configs))}, spec.repeats, spec.order,
                              spec.order_seed)
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(dict(dataclasses.asdict(spec), run_order=[
            dict(config=spec.configs[o.key].label, rate=o.rate, repeat=o.repeat) for o in order]), f, indent=2)
    configs = engine_configs(spec.configs)
    llm = make_llm(spec.model, configs, "+".join(c.label for c in spec.configs), progress, log,
                   spec.executor)
    # The same requests for every configuration and repeat.
    limit = llm.engine_config.model_len(llm.model_config)
    workloads = {rate: make_workload(rate=rate, context_limit=limit, **spec.workload) for rate in spec.rates}
    done = {}
    for n, slot in enumerate(order, 1):
        config = spec.configs[slot.key]
        llm.use(configs[slot.key])
        result = run_bench(llm, workloads[slot.rate], ttft_bound_s=spec.ttft_bound_s, tbt_bound_s=spec.tbt_bound_s,
                           label=config.label, warmup=spec.warmup, progress=progress,
                           goodput_slo_ms=spec.goodput_slo_ms)
        result.summary["repeat"] = slot.repeat
        write_bench(result, os.path.join(out_dir, "runs", run_dir_name(config, slot.rate, slot.repeat, spec.repeats)))
        s = result.summary
        log(f"[{n}/{len(order)}] [{config.label}] {slot.rate:g} req/s" + (f", repeat {slot.repeat}" if spec.repeats > 1
                                                                            else "")
            + f": {s['num_finished']}/{s['num_requests']} finished in {s['duration_s']:.1f} s, SLO attainment "
            f"{100 * s['slo_attainment']:.0f}%")
        done[slot.key, slot.rate, slot.repeat] = result
    results = [done[k] for k in sorted(done)]
    write_summary_csv(results, os.path.join(out_dir, "summary.csv"))
    write_aggregate_csv(results, os.path.join(out_dir, "aggregate.csv"))
    write_plots([r for r in results if r.summary.get("repeat", 0) == 0], os.path.join(out_dir, "plots"))
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown_report(spec, results, [(spec.configs[o.key].label, o.rate, o.repeat) for o in order]))
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
    write_rows([_flatten(r.summary) for r in results], path)


def write_rows(rows: list[dict], path: str) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def grouped(results: list[BenchResult]) -> list[tuple[dict, dict]]:
    """The runs of each (label, rate), in first-seen order, as (first run's summary, aggregate of
    all its repeats: every number a Spread, see lp_jax.bench.interleave.aggregate)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r.summary["label"], r.summary["workload"]["rate"]), []).append(r.summary)
    return [(runs[0], aggregate(runs)) for runs in groups.values()]


def write_aggregate_csv(results: list[BenchResult], path: str) -> None:
    """One row per configuration and rate: every number of the summaries as _mean, _std, _min,
    _max and _n over its repeats (label and rate as they are)."""
    rows = []
    for first, agg in grouped(results):
        row = dict(label=first["label"], rate=first["workload"]["rate"], repeats=len([r for r in results if (
            r.summary["label"], r.summary["workload"]["rate"]) == (first["label"], first["workload"]["rate"])]))
        row.update(spread_columns(_flatten(agg)))
        rows.append(row)
    write_rows(rows, path)


def _num(x, scale: float = 1.0, fmt: str = ".3g") -> str:
    """A number for the table; a Spread of several runs as "mean ± std (min..max)"."""
    if isinstance(x, Spread):
        if x.n == 1:
            return _num(x.mean, scale, fmt)
        return (f"{_num(x.mean, scale, fmt)} ± {_num(x.std, scale, '.2g')} "
                f"({_num(x.lo, scale, fmt)}..{_num(x.hi, scale, fmt)})")
    return "n/a" if x is None else format(x * scale, fmt)


def expert_ratio_lines(groups: list[tuple[dict, dict]], labels: list[str]) -> list[str]:
    """Expert bytes per request of each configuration relative to the first one, at each rate,
    both ways (the paper's headline: layered / chunked-512); over repeats, of the means."""
    if len(labels) < 2:
        return []
    base = labels[0]
    by = {(s0["label"], s0["workload"]["rate"]): s for s0, s in groups}
    rates = list(dict.fromkeys(s0["workload"]["rate"] for s0, _ in groups))
    lines = ["", f"Expert bytes per request relative to {base} (distinct / streamed):", ""]
    for label in labels[1:]:
        cells = []
        for rate in rates:
            a, b = by.get((label, rate)), by.get((base, rate))
            if not (a and b):
                continue
            ad, bd = _mean(a["expert_bytes_per_request"]), _mean(b["expert_bytes_per_request"])
            at, bt = _mean(a["expert_streamed_bytes_per_request"]), _mean(b["expert_streamed_bytes_per_request"])
            if ad is not None and at is not None and bd and bt:
                cells.append(f"{rate:g} req/s {ad / bd:.3f} / {at / bt:.3f}")
        lines.append(f"- {label} / {base}: " + ("; ".join(cells) if cells else "n/a (no expert traffic)"))
    return lines


def _mean(x) -> float | None:
    return x.mean if isinstance(x, Spread) else x


TABLE_HEADER = [
    "| configuration | rate (req/s) | runs | finished | TTFT mean / p99 (s) | TBT p50 / p99 (ms) | TPOT mean (ms) "
    "| E2E mean / p99 (s) | output tok/s | SLO attainment (%) | goodput (req/s) "
    "| expert GB / request: distinct / streamed | expert MB / iteration: distinct / streamed "
    "| mJ / token above idle (raw) | mJ / output token above idle (raw) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def table_lines(groups: list[tuple[dict, dict]]) -> list[str]:
    """The metrics table, a row per (configuration, rate) of `grouped`: one run's figures, or over
    repeats each cell as mean ± std (min..max)."""
    lines = list(TABLE_HEADER)
    for s0, s in groups:
        runs = s["num_requests"].n if isinstance(s["num_requests"], Spread) else 1
        lines.append(
            f"| {s0['label']} | {s0['workload']['rate']:g} | {runs} | {_num(s['num_finished'], 1, '.4g')}/"
            f"{s0['num_requests']} "
            f"| {_num(s['ttft_s']['mean'])} / {_num(s['ttft_s']['p99'])} "
            f"| {_num(s['tbt_s']['p50'], 1e3)} / {_num(s['tbt_s']['p99'], 1e3)} | {_num(s['tpot_s']['mean'], 1e3)} "
            f"| {_num(s['e2e_s']['mean'])} / {_num(s['e2e_s']['p99'])} | {_num(s['throughput_tok_s'], 1, '.1f')} "
            f"| {_num(s['slo_attainment'], 100, '.3g')} | {_num(s['request_goodput_per_s'])} "
            f"| {_num(s['expert_bytes_per_request'], 1e-9, '.4g')} / "
            f"{_num(s['expert_streamed_bytes_per_request'], 1e-9, '.4g')} "
            f"| {_num(s['expert_bytes_per_iteration'], 1e-6, '.4g')} / "
            f"{_num(s['expert_streamed_bytes_per_iteration'], 1e-6, '.4g')} "
            f"| {_num(s['energy_mj_per_token_above_idle'])} ({_num(s['energy_mj_per_token'])}) "
            f"| {_num(s['energy_mj_per_output_token_above_idle'])} ({_num(s['energy_mj_per_output_token'])}) |")
    return lines


def best_rate_lines(groups: list[tuple[dict, dict]], labels: list[str], slo_target: float) -> list[str]:
    """Per configuration: the highest rate whose mean attainment (over repeats) stays >= target
    at it and every lower rate."""
    lines = [f"Highest measured rate with SLO attainment >= {100 * slo_target:.0f}% at it and every lower rate "
             "(mean over repeats):", ""]
    for label in labels:
        runs = [(s0["workload"]["rate"], _mean(s["slo_attainment"])) for s0, s in groups if s0["label"] == label]
        best = max_rate_meeting_slo([r for r, _ in runs], [a for _, a in runs], slo_target)
        lines.append(f"- {label}: " + (f"{best:g} requests/s" if best is not None else "none of the rates"))
    return lines


def markdown_report(spec: CompareSpec, results: list[BenchResult], order: list[tuple] | None = None) -> str:
    """results.md: where and what was run, the table, the highest rate within the SLO, plots.
    order: (label, rate, repeat) of each run in the order they ran."""
    s0 = results[0].summary
    w = s0["workload"]
    simulated = s0["executor"] != "real"
    lines = [
        f"# lp-jax compare: {s0['model']} on {s0['device']['name']} ({s0['device']['platform']})",
        "",
    ]
    if simulated:
        lines += [f"**{s0['executor']}**: the engine and its schedules ran for real on a virtual clock; every "
                  "latency is the cost model's, not a measurement (lp_jax/sim, docs/simulator.md).", ""]
    lines += [
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
        f"- one engine for every configuration (the same weights and executables; the schedule switched between "
        f"runs), runs interleaved rate-major, order {spec.order}"
        + (f" (seed {spec.order_seed})" if spec.order == "shuffle" else "")
        + f", {spec.repeats} run(s) of each configuration at each rate on the same requests"
        + ("; cells: mean ± sample std (min..max) over the runs" if spec.repeats > 1 else ""),
        "",
    ]
    groups = grouped(results)
    lines += table_lines(groups)
    lines += expert_ratio_lines(groups, [c.label for c in spec.configs])
    lines += [""] + best_rate_lines(groups, [c.label for c in spec.configs], spec.slo_target)
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
    if order:
        lines += ["", "Run order: " + ", ".join(f"{label} @ {rate:g}" + (f" #{rep}" if spec.repeats > 1 else "")
                                                for label, rate, rep in order)]
    lines += ["", "Plots" + (" (the first run of each configuration and rate)" if spec.repeats > 1 else "") + ":",
              ""] + [f"![{name}](plots/{name})" for name in FIGURES] + [""]
    return "\n".join(lines)
