"""Speed of the simulator: N requests of a workload through the simulated engine (real schedulers,
block manager and bookkeeping; the cost model instead of the forward pass), per schedule.

    .venv/bin/python scripts/bench_sim.py                       # 10,000 arxiv-long requests, both schedules
    .venv/bin/python scripts/bench_sim.py --num-requests 1000 --rate 1.5 --out benchmarks/results

Prints, per schedule: wall and CPU seconds of the run, iterations, microseconds per iteration, the
simulated seconds it covered and how many times faster than real time that is, beside the target
(10,000 requests in under 60 s on 2 cores) and the machine's load average (the machine is shared:
wall time includes other processes' share of the cores, CPU time does not). Writes
sim_speed_cpu.json and .md into --out when given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import lp_jax
from lp_jax.bench.runner import run_bench
from lp_jax.bench.workload import make_workload

CONFIGS = {"layered": {}, "chunked-512": dict(token_budget=512)}
TARGET_S = 60.0


def run(schedule: str, options: dict, args) -> dict:
    setup = time.perf_counter()  # the engine, and the routing model's tables the first time (seconds)
    llm = lp_jax.LLM(args.model, schedule.split("-")[0], executor=args.executor, routing=args.routing, **options)
    setup = time.perf_counter() - setup
    workload = make_workload(args.workload, args.num_requests, rate=args.rate, seed=args.seed,
                             context_limit=llm.engine_config.model_len(llm.model_config))
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_bench(llm, workload, ttft_bound_s=10.0, tbt_bound_s=0.125, warmup=0, progress=not args.no_progress)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    s, iterations = result.summary, llm.engine.state.iteration
    return dict(schedule=schedule, executor=llm.executor_label, setup_s=setup, wall_s=wall, cpu_s=cpu,
                iterations=iterations,
                us_per_iteration_wall=1e6 * wall / iterations, us_per_iteration_cpu=1e6 * cpu / iterations,
                simulated_s=s["duration_s"], times_real_time=s["duration_s"] / wall, finished=s["num_finished"],
                requests=s["num_requests"], load_average_before=load, load_average_after=os.getloadavg()[0],
                ttft_mean_s=s["ttft_s"]["mean"], tbt_p99_s=s["tbt_s"]["p99"], slo_attainment=s["slo_attainment"])


def markdown(rows: list[dict], args) -> str:
    lines = [f"# Simulator speed: {args.num_requests} {args.workload} requests, {args.model} at {args.rate:g} req/s",
             "", f"{datetime.date.today()}, {platform.node()} ({os.cpu_count()} CPUs, shared with other work: wall "
             "time includes their share of the cores, CPU time is this process alone). Target: 10,000 requests "
             f"in < {TARGET_S:g} s.", "",
             "| schedule | set-up s | wall s | CPU s | wall / target | iterations | us / iteration (wall, CPU) "
             "| simulated s | x real time | load avg before / after |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['schedule']} | {r['setup_s']:.1f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{r['wall_s'] / TARGET_S * 10000 / args.num_requests:.2f} | {r['iterations']} | "
                     f"{r['us_per_iteration_wall']:.0f}, {r['us_per_iteration_cpu']:.0f} | {r['simulated_s']:.0f} | "
                     f"{r['times_real_time']:.0f} | {r['load_average_before']:.1f} / {r['load_average_after']:.1f} |")
    lines += ["", f"Cost table: {rows[0]['executor']}; routing: {args.routing}. Set-up: building the engine, and "
              "the first time in a process the routing model's tables of a calibrated profile; not in wall / CPU.",
              ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen3-30b-a3b")
    p.add_argument("--executor", default="sim", help="simulator and cost table (default: %(default)s: the preferred)")
    p.add_argument("--routing", default="qwen3-paper", help="routing profile (default: %(default)s, the bare compare's)")
    p.add_argument("--workload", default="arxiv-long")
    p.add_argument("--num-requests", type=int, default=10000)
    p.add_argument("--rate", type=float, default=1.0, help="requests/s (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedule", action="append", choices=list(CONFIGS), help="default: both")
    p.add_argument("--out", help="folder for sim_speed_cpu.json and .md")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    rows = []
    for name in args.schedule or list(CONFIGS):
        row = run(name, CONFIGS[name], args)
        rows.append(row)
        print(f"{name}: {row['requests']} requests in {row['wall_s']:.1f} s wall ({row['cpu_s']:.1f} s CPU; target "
              f"{TARGET_S:g} s for 10,000), {row['iterations']} iterations, {row['us_per_iteration_wall']:.0f} us each "
              f"({row['us_per_iteration_cpu']:.0f} us CPU), {row['simulated_s']:.0f} simulated s = "
              f"{row['times_real_time']:.0f}x real time; load average {row['load_average_before']:.1f}")
    text = markdown(rows, args)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, "sim_speed_cpu")
        with open(stem + ".json", "w") as f:
            json.dump(dict(args=vars(args), rows=rows, date=datetime.date.today().isoformat()), f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
