"""Measured runs beside the same runs simulated: same model, configurations, rates, workload (seed
included), warm-up, SLO, KV pool (num_pages from the measured run) and routing profile, for the
simulator's error on runs its cost table was not fitted to. Two kinds of measured folder:

- an `lp-jax compare` results folder (compare.json + summary.csv): every configuration x rate;
- an `lp-jax study` out folder, or any folder under it (every point folder found below it:
  point.json + summary.json). The points of one model are simulated on one engine built for all
  their configurations, as the study served them (the same row ladder), each point with the
  spec its point.json resolved.

    .venv/bin/python scripts/sim_vs_measured.py \
        benchmarks/results/compare_qwen3-30b-a3b_h100_80gb_hbm3_2026-11-27 --executor sim:h100
    .venv/bin/python scripts/sim_vs_measured.py benchmarks/results/study_h200_anchor_2026-12-02 \
        --executor sim:h200 --out benchmarks/results/sim_h200_anchor_2026-12-02

Prints a markdown table (measured / simulated / error per metric and run) and writes it, with a
JSON of every figure, to --out when given; study points with iterations.jsonl (a study with
`trace = true`) are also replayed iteration by iteration (lp_jax.bench.iteration_replay: each
measured plan timed on the cost table) and the error's distribution p1..p99 per point and per
schedule is added (per_iteration_error.json); with --out, each simulated study point goes to
OUT/points/<its folder>/ too, as a study point folder (so `study --summary` tools read it).
"""

import argparse
import csv
import dataclasses
import glob
import json
import os
import sys
from dataclasses import dataclass

import numpy as np

from lp_jax.bench import iteration_replay
from lp_jax.bench.compare import _flatten, parse_config
from lp_jax.bench.iteration_log import ITERATIONS_FILE, read_iterations
from lp_jax.bench.runner import BenchResult, make_llm, run_bench, write_bench
from lp_jax.bench.workload import make_workload
from lp_jax.engine.config import EngineConfig

# (summary key, name, unit). Flattened summary keys: "ttft_s.mean" is summary["ttft_s"]["mean"].
METRICS = (("ttft_s.mean", "TTFT mean", "s"), ("ttft_s.p99", "TTFT p99", "s"), ("tbt_s.p50", "TBT p50", "ms"),
           ("tbt_s.p99", "TBT p99", "ms"), ("tpot_s.mean", "TPOT mean", "ms"), ("e2e_s.mean", "E2E mean", "s"),
           ("slo_attainment", "SLO attainment", "%"),
           ("expert_bytes_per_request", "expert GB / request, distinct", "GB"),
           ("expert_streamed_bytes_per_request", "expert GB / request, streamed", "GB"))
SCALE = {"s": 1.0, "ms": 1e3, "%": 100.0, "GB": 1e-9}


@dataclass
class Replay:
    """One measured run and what reruns it in the simulator. configs: the engine's configurations
    (LLM.sharing), config: the one this run used; workload: make_workload's keywords; bench:
    run_bench's; measured: the run's summary, flattened (values may be strings, from a CSV);
    folder: the study point's folder (None for a compare run); spec: its point.json spec."""

    label: str
    rate: float
    model: str
    configs: tuple[EngineConfig, ...]
    config: EngineConfig
    workload: dict
    bench: dict
    measured: dict
    folder: str | None = None
    spec: dict | None = None


def compare_replays(folder: str) -> list[Replay]:
    """The runs of an `lp-jax compare` folder, each on an engine of its own configuration."""
    with open(os.path.join(folder, "compare.json")) as f:
        spec = json.load(f)
    with open(os.path.join(folder, "summary.csv")) as f:
        measured = {(r["label"], float(r["workload.rate"])): r for r in csv.DictReader(f)}
    out = []
    for c in spec["configs"]:
        config = parse_config(c["label"], {})
        for rate in spec["rates"]:
            m = measured[(c["label"], float(rate))]
            options = dict(config.options, num_pages=int(m["options.num_pages"]))
            # Runs from before these options routed uniformly and chunked every prompt above the cohort cap.
            options["routing"] = m.get("options.routing") or "uniform"
            lone = m.get("options.max_lone_prompt_tokens") or m.get("options.max_cohort_tokens")
            options["max_lone_prompt_tokens"] = int(lone) if lone else EngineConfig(
                max_cohort_tokens=options.get("max_cohort_tokens", EngineConfig.max_cohort_tokens)).max_cohort_tokens
            engine = EngineConfig(schedule=config.schedule, **options)
            workload = dict(spec["workload"], rate=rate, context_limit=int(m["workload.context_limit"]))
            bench = dict(ttft_bound_s=spec["ttft_bound_s"], tbt_bound_s=spec["tbt_bound_s"], warmup=spec["warmup"])
            out.append(Replay(c["label"], float(rate), spec["model"], (engine,), engine, workload, bench, m))
    return out


def study_replays(folder: str) -> list[Replay]:
    """The study points found under `folder` (each a folder with point.json and summary.json), in
    path order; the points of a model share one engine of all their configurations."""
    paths = sorted(glob.glob(os.path.join(folder, "**", "point.json"), recursive=True))
    if not paths:
        raise ValueError(f"{folder}: neither a compare folder (compare.json) nor a study folder (no point.json below it)")
    out = []
    for path in paths:
        with open(path) as f:
            spec = json.load(f)["spec"]
        with open(os.path.join(os.path.dirname(path), "summary.json")) as f:
            summary = json.load(f)
        m = dict(_flatten(summary), **{"options.executor_row_buckets": summary["options"].get("executor_row_buckets")})
        engine = EngineConfig(**dict(spec["engine"], num_pages=int(m["options.num_pages"])))
        workload = dict(spec["workload"], context_limit=int(m["workload.context_limit"]))
        bench = dict(ttft_bound_s=spec["slo"]["ttft_s"], tbt_bound_s=spec["slo"]["tbt_s"], warmup=spec["warmup"],
                     goodput_slo_ms=spec["goodput_slo_ms"], label=spec["schedule"])
        out.append(Replay(spec["schedule"], float(spec["workload"]["rate"]), spec["model"], (), engine, workload,
                          bench, m, os.path.relpath(os.path.dirname(path), folder), spec))
    for r in out:
        r.configs = tuple(dict.fromkeys(o.config for o in out if o.model == r.model))
    return out


def replays_of(folder: str) -> list[Replay]:
    return compare_replays(folder) if os.path.isfile(os.path.join(folder, "compare.json")) else study_replays(folder)


def simulated_llm(engines: dict, r: Replay, executor: str):
    """The simulated engine of a replay's (model, configurations), made once into `engines`, set
    to the replay's configuration."""
    key = (r.model, r.configs)
    if key not in engines:
        engines[key] = make_llm(r.model, list(r.configs), r.label, False, lambda *_: None, executor=executor)
    engines[key].use(r.config)
    return engines[key]


def simulate(replays: list[Replay], executor: str, engines: dict | None = None) -> list[BenchResult]:
    """Each replay's simulated run, one simulated engine per (model, configurations)."""
    engines = {} if engines is None else engines
    return [run_bench(simulated_llm(engines, r, executor), make_workload(**r.workload), progress=False, **r.bench)
            for r in replays]


def per_iteration(folder: str, replays: list[Replay], executor: str, engines: dict) -> list[tuple[str, dict]]:
    """(label, error distribution) per traced study point (its iterations.jsonl replayed plan by
    plan, lp_jax.bench.iteration_replay) and per schedule over its points; [] without traces."""
    per_point, by_schedule = [], {}
    for r in replays:
        path = os.path.join(folder, r.folder, ITERATIONS_FILE) if r.folder is not None else None
        if path is None or not os.path.isfile(path):
            continue
        times = iteration_replay.replay(read_iterations(path), simulated_llm(engines, r, executor).engine.executor)
        per_point.append((f"{r.label} at {r.rate:g}", iteration_replay.distribution(times)))
        by_schedule.setdefault(r.label, []).append(times)
    merged = [(f"{label}, all rates", iteration_replay.distribution(
        {k: np.concatenate([t[k] for t in runs]) for k in runs[0]})) for label, runs in by_schedule.items()]
    return per_point + merged


def _number(value):
    return None if value in (None, "") else float(value)


def compare_rows(replays: list[Replay], simulated: list[dict]) -> list[dict]:
    """Per run: label, rate, folder, device, executor, the engines' row ladders (measured, simulated)
    and each metric's measured, simulated and error (simulated / measured - 1; None where the
    measured run has no such figure)."""
    rows = []
    for r, s in zip(replays, simulated):
        flat = _flatten(s)
        row = dict(label=r.label, rate=r.rate, folder=r.folder, executor=s["executor"], device=r.measured["device.name"],
                   row_buckets=dict(measured=r.measured.get("options.executor_row_buckets"),
                                    simulated=s["options"]["executor_row_buckets"]))
        for key, name, _ in METRICS:
            real, sim = _number(r.measured.get(key)), _number(flat.get(key))
            row[name] = dict(measured=real, simulated=sim,
                             error=None if real is None or sim is None or real == 0 else sim / real - 1.0)
        rows.append(row)
    return rows


def _cell(v: dict, unit: str) -> str:
    if v["measured"] is None:
        return "-"
    k = SCALE[unit]
    error = "n/a" if v["error"] is None else f"{100 * v['error']:+.0f} %"
    return f"{k * v['measured']:.3g} / {k * v['simulated']:.3g} ({error})"


def markdown(rows: list[dict], folder: str) -> str:
    names = [m[1] for m in METRICS]
    units = {m[1]: m[2] for m in METRICS}
    lines = [f"Measured: `{folder}` ({rows[0]['device']}). Simulated: {rows[0]['executor']}. Cells: measured / "
             "simulated (error = simulated / measured - 1).", "",
             "| configuration | rate | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['label']} | {r['rate']:g} | " + " | ".join(_cell(r[n], units[n]) for n in names) + " |")
    units_line = ", ".join(f"{n} in {u}" for n, u in units.items())
    return "\n".join(lines + ["", units_line + " (- : not in the measured run's summary).", ""])


def write(out: str, text: str, rows: list[dict], replays: list[Replay], simulated: list[BenchResult],
          iterations: list | None = None) -> None:
    """sim_vs_measured.md / .json into out; each simulated study point as a study writes one
    (requests.jsonl, summary.json, vllm_result.json, point.json: the measured point's spec with
    the executor replaced) under out/points/<folder>/."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sim_vs_measured.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "sim_vs_measured.json"), "w") as f:
        json.dump(rows, f, indent=1)
    if iterations:
        with open(os.path.join(out, "per_iteration_error.json"), "w") as f:
            json.dump(dict(iterations), f, indent=1)
    for r, s in zip(replays, simulated):
        if r.folder is None:
            continue
        point = os.path.join(out, "points", r.folder)
        write_bench(s, point)
        record = dict(spec=dict(r.spec, executor=s.summary["executor"]), folder=r.folder,
                      replays=f"measured point {r.folder}", engine=dataclasses.asdict(r.config))
        with open(os.path.join(point, "point.json"), "w") as f:
            json.dump(record, f, indent=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a compare results folder (compare.json + summary.csv) or a study folder")
    p.add_argument("--executor", default="sim", help="simulator and cost table (default: %(default)s)")
    p.add_argument("--out", help="folder for sim_vs_measured.md and .json (and the simulated study points)")
    args = p.parse_args(argv)
    replays = replays_of(args.folder)
    engines = {}
    simulated = simulate(replays, args.executor, engines)
    rows = compare_rows(replays, [s.summary for s in simulated])
    text = markdown(rows, args.folder)
    iterations = per_iteration(args.folder, replays, args.executor, engines)
    if iterations:
        text += ("\nPer-iteration error (each traced point's iterations replayed plan by plan on the cost table; "
                 "simulated / measured - 1; busy: dispatched before the previous came back):\n\n"
                 + iteration_replay.markdown(iterations))
    print(text)
    if args.out:
        write(args.out, text, rows, replays, simulated, iterations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
