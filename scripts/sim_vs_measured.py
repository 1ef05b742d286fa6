"""A measured `lp-jax compare` results folder beside the same comparison simulated: same model,
configurations, rates, workload (seed included), warm-up, KV pool (num_pages from the measured
run) and routing profile, for the simulator's error on runs its cost table was not fitted to.

    .venv/bin/python scripts/sim_vs_measured.py \
        benchmarks/results/compare_qwen3-30b-a3b_h100_80gb_hbm3_2026-11-27 --executor sim:h100

Prints a markdown table (measured / simulated / error per metric and run) and writes it, with a
JSON of every figure, to --out when given.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from lp_jax.bench.runner import make_llm, run_bench
from lp_jax.bench.compare import parse_config
from lp_jax.bench.workload import make_workload
from lp_jax.engine.config import EngineConfig

METRICS = (("ttft_s", "mean", "TTFT mean", "s"), ("ttft_s", "p99", "TTFT p99", "s"), ("tbt_s", "p50", "TBT p50", "ms"),
           ("tbt_s", "p99", "TBT p99", "ms"), ("tpot_s", "mean", "TPOT mean", "ms"), ("e2e_s", "mean", "E2E mean", "s"))


def compare_folder(folder: str, executor: str) -> list[dict]:
    with open(os.path.join(folder, "compare.json")) as f:
        spec = json.load(f)
    with open(os.path.join(folder, "summary.csv")) as f:
        measured = {(r["label"], float(r["workload.rate"])): r for r in csv.DictReader(f)}
    rows = []
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
            llm = make_llm(spec["model"], [EngineConfig(schedule=config.schedule, **options)], c["label"], False,
                           lambda *_: None, executor=executor)
            workload = make_workload(rate=rate, context_limit=int(m["workload.context_limit"]), **spec["workload"])
            s = run_bench(llm, workload, ttft_bound_s=spec["ttft_bound_s"], tbt_bound_s=spec["tbt_bound_s"],
                          warmup=spec["warmup"], progress=False).summary
            row = dict(label=c["label"], rate=rate, executor=s["executor"], device=m["device.name"])
            for group, stat, name, _ in METRICS:
                real, sim = float(m[f"{group}.{stat}"]), s[group][stat]
                row[name] = dict(measured=real, simulated=sim, error=sim / real - 1.0)
            real_gb, sim_gb = float(m["expert_bytes_per_request"]), s["expert_bytes_per_request"]
            row["expert GB / request"] = dict(measured=real_gb / 1e9, simulated=sim_gb / 1e9, error=sim_gb / real_gb - 1.0)
            rows.append(row)
    return rows


def markdown(rows: list[dict], folder: str) -> str:
    names = [m[2] for m in METRICS] + ["expert GB / request"]
    units = {m[2]: m[3] for m in METRICS}
    lines = [f"Measured: `{folder}` ({rows[0]['device']}). Simulated: {rows[0]['executor']}. Cells: measured / "
             "simulated (error = simulated / measured - 1).", "",
             "| configuration | rate | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = []
        for n in names:
            scale = 1e3 if units.get(n) == "ms" else 1.0
            v = r[n]
            cells.append(f"{scale * v['measured']:.3g} / {scale * v['simulated']:.3g} ({100 * v['error']:+.0f} %)")
        lines.append(f"| {r['label']} | {r['rate']:g} | " + " | ".join(cells) + " |")
    units_line = ", ".join(f"{n} in {u}" for n, u in units.items())
    return "\n".join(lines + ["", units_line + ", expert traffic in GB per request.", ""])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a compare results folder (compare.json + summary.csv)")
    p.add_argument("--executor", default="sim", help="simulator and cost table (default: %(default)s)")
    p.add_argument("--out", help="folder for sim_vs_measured.md and .json")
    args = p.parse_args(argv)
    rows = compare_folder(args.folder, args.executor)
    text = markdown(rows, args.folder)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "sim_vs_measured.md"), "w") as f:
            f.write(text)
        with open(os.path.join(args.out, "sim_vs_measured.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
