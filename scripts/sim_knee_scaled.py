"""Each schedule's highest rate at the SLO target in the simulator, with the cost table rescaled per
schedule to the measured iteration time: a bracket for a simulator whose iteration times are off
by a schedule-dependent factor (docs/reproduction.md).

For each schedule of a measured study folder: the cost table with every device time multiplied by
k (peaks / k, fixed times x k: each call's time scales by exactly k, the roofline being
homogeneous), k found by bisection so that the simulated mean TTFT equals the measured one at the
schedule's lowest measured rate (the fit point; TTFT is what decides the knee, and a percentile of
the gaps is a poor target: layered's gaps are bimodal, decode-only and with a prefill group);
then the schedule's other measured rates (held out: their measured / simulated error says whether
one factor carries) and the asked rates, on that table, as sim_vs_measured.py replays them.

    .venv/bin/python scripts/sim_knee_scaled.py benchmarks/results/study_h200_anchor_2026-12-02 \
        --executor sim:h200 --rates layered=1.4,1.5,1.6,1.7,1.8,1.9,2.0 \
        --rates chunked:token_budget=512=0.8,0.9,1.0,1.1,1.2 --out benchmarks/results/sim_h200_anchor_2026-12-02
"""

import argparse
import dataclasses
import json
import os
import sys

from lp_jax.bench.metrics import max_rate_meeting_slo
from lp_jax.sim import parse_executor
from lp_jax.sim.cost_model import CostTable, load_table

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sim_vs_measured import compare_rows, replays_of, simulate  # noqa: E402

FIXED_TIMES = ("call_s", "layer_s", "row_s", "head_s", "head_row_s", "range_row_s")


def scaled(table: CostTable, k: float) -> CostTable:
    """The table with every device time x k (host times unchanged), saying so in its source."""
    d = table.to_json()
    d["peaks"] = {name: value / k for name, value in d["peaks"].items()}
    d["device_params"] = dict(d["device_params"], **{n: d["device_params"][n] * k for n in FIXED_TIMES})
    d["source"] = f"{d['source']}; device times x {k:.3f} (scripts/sim_knee_scaled.py)"
    d["name"] = f"{d['name']} x{k:.3f}"
    return CostTable.from_json(d)


def fit_scale(table: CostTable, replay, low: float = 0.25, high: float = 4.0, steps: int = 12) -> float:
    """k in [low, high] at which the replay's simulated mean TTFT equals its measured one (geometric
    bisection: the TTFT grows with k; steps=12 resolves k to 0.3 %). ValueError if out of range."""
    target = float(replay.measured["ttft_s.mean"])

    def ttft(k):
        return simulate([replay], scaled(table, k))[0].summary["ttft_s"]["mean"]

    if not ttft(low) <= target <= ttft(high):
        raise ValueError(f"{replay.label} at {replay.rate:g} req/s: no scale in [{low:g}, {high:g}] gives the measured "
                         f"mean TTFT {target:.3g} s")
    for _ in range(steps):
        mid = (low * high) ** 0.5
        low, high = (mid, high) if ttft(mid) < target else (low, mid)
    return (low * high) ** 0.5


def parse_rates(items: list[str]) -> dict[str, list[float]]:
    out = {}
    for item in items:
        label, sep, rates = item.rpartition("=")
        if not sep or not label:
            raise ValueError(f"--rates {item!r}: expected LABEL=R1,R2,...")
        out[label] = [float(r) for r in rates.split(",")]
    return out


def run(folder: str, executor: str, rates: dict[str, list[float]], target: float = 0.9) -> dict:
    replays = replays_of(folder)
    table = load_table(parse_executor(executor), replays[0].model)
    result = {}
    for label, asked in rates.items():
        mine = sorted((r for r in replays if r.label == label), key=lambda r: r.rate)
        if not mine:
            raise ValueError(f"--rates: no measured point of {label!r} in {folder}")
        k = fit_scale(table, mine[0])
        swept = [dataclasses.replace(mine[0], workload=dict(mine[0].workload, rate=rate)) for rate in asked]
        runs = simulate(mine + swept, scaled(table, k))
        rows = compare_rows(mine, [s.summary for s in runs[:len(mine)]])
        sweep = [dict(rate=rate, slo_attainment=s.summary["slo_attainment"], ttft_mean_s=s.summary["ttft_s"]["mean"],
                      tbt_p50_s=s.summary["tbt_s"]["p50"]) for rate, s in zip(asked, runs[len(mine):])]
        result[label] = dict(scale=k, fit_rate=mine[0].rate, measured_vs_scaled=rows, sweep=sweep,
                             highest_rate=max_rate_meeting_slo(asked, [s["slo_attainment"] for s in sweep], target))
    return result


def markdown(result: dict, table_name: str) -> str:
    lines = [f"Cost table {table_name}, device times x k per schedule (k: the simulated mean TTFT equals the "
             "measured one at the fit rate). Cells: measured / simulated on the scaled table (error).", ""]
    for label, r in result.items():
        lines += [f"**{label}**, k = {r['scale']:.3f} (fit at {r['fit_rate']:g} req/s):", "",
                  "| rate | role | TTFT mean s | TTFT p99 s | TBT p50 ms | TPOT mean ms | E2E mean s | SLO attainment % |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in r["measured_vs_scaled"]:
            cells = []
            for name, scale in (("TTFT mean", 1), ("TTFT p99", 1), ("TBT p50", 1e3), ("TPOT mean", 1e3),
                                ("E2E mean", 1), ("SLO attainment", 100)):
                v = row[name]
                cells.append(f"{scale * v['measured']:.3g} / {scale * v['simulated']:.3g} ({100 * v['error']:+.0f} %)")
            role = "fit" if row["rate"] == r["fit_rate"] else "held out"
            lines.append(f"| {row['rate']:g} | {role} | " + " | ".join(cells) + " |")
        for s in r["sweep"]:
            lines.append(f"| {s['rate']:g} | simulated only | {s['ttft_mean_s']:.3g} | - | {1e3 * s['tbt_p50_s']:.3g} "
                         f"| - | - | {100 * s['slo_attainment']:.1f} |")
        best = r["highest_rate"]
        lines += ["", f"Highest simulated rate at >= 90 % attainment (scaled table): "
                  f"{'none of the rates' if best is None else f'{best:g} req/s'}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a measured study folder (point folders below it)")
    p.add_argument("--executor", default="sim", help="simulator and cost table (default: %(default)s)")
    p.add_argument("--rates", action="append", required=True, metavar="LABEL=R1,R2,...",
                   help="a schedule's rates to sweep (requests/s); repeat per schedule")
    p.add_argument("--out", help="folder for sim_knee_scaled.md and .json")
    args = p.parse_args(argv)
    result = run(args.folder, args.executor, parse_rates(args.rates))
    text = markdown(result, load_table(parse_executor(args.executor), replays_of(args.folder)[0].model).name)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "sim_knee_scaled.md"), "w") as f:
            f.write(text)
        with open(os.path.join(args.out, "sim_knee_scaled.json"), "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
