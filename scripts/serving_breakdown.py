"""Why a serving run's latencies are what they are, from its requests.jsonl: for every study point
folder found under the given folders (measured or simulated alike), a table of

- SLO misses by cause (TTFT over its bound, some gap over its bound, both, not finished);
- offered vs served work: prompt and output tokens arriving per second (the workload's tokens /
  its arrival span) against the tokens the run processed per second of its window; a run whose
  served rate is below the offered one is past its knee, its queue (and TTFT) growing with time;
- the queue's growth: mean TTFT of the first and last quarter of the requests, by arrival;
- iterations: the engine hands every token of one iteration to the host at the same moment, so
  the distinct token timestamps of a run are the end times of its iterations that emitted a
  token, and their differences the time per iteration (p10 / p50 / p90 / p99, ms); the count
  beside the run's iteration count (those that emitted no token, such as a layered group with
  no decode, merge into the next one's interval).

    .venv/bin/python scripts/serving_breakdown.py benchmarks/results/study_h200_anchor_2026-12-02 \
        benchmarks/results/sim_h200_anchor_2026-12-02/points
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

from lp_jax.bench.metrics import RequestRecord, latencies

PERCENTILES = (10, 50, 90, 99)


def read_point(folder: str) -> tuple[dict, list[RequestRecord]]:
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(folder, "requests.jsonl")) as f:
        records = [RequestRecord(**json.loads(line)) for line in f]
    return summary, records


def breakdown(summary: dict, records: list[RequestRecord]) -> dict:
    """The figures of the module doc for one run (times in s, rates in tokens/s)."""
    ttft_bound, tbt_bound = summary["slo"]["ttft_s"], summary["slo"]["tbt_s"]
    misses = dict(ttft=0, gap=0, both=0, unfinished=0)
    ttfts = []
    for r in records:
        if not r.finished or not r.token_times_s:
            misses["unfinished"] += 1
            continue
        lat = latencies(r.arrival_s, r.token_times_s)
        ttfts.append(lat.ttft)
        late, gappy = lat.ttft > ttft_bound, bool(lat.gaps.size and lat.gaps.max() > tbt_bound)
        if late or gappy:
            misses["both" if late and gappy else "ttft" if late else "gap"] += 1
    arrivals = np.array([r.arrival_s for r in records])
    span = arrivals.max() - arrivals.min()
    window = summary["duration_s"]
    quarter = max(1, len(ttfts) // 4)
    order = np.argsort([r.arrival_s for r in records if r.finished and r.token_times_s])
    ttft_by_arrival = np.asarray(ttfts)[order]
    stamps = np.unique(np.concatenate([np.asarray(r.token_times_s) for r in records if r.token_times_s]))
    per_iteration = np.diff(stamps)
    prompt, output = summary["prompt_tokens"], summary["output_tokens"]
    return dict(
        misses=misses, max_gap_ms=1e3 * max((latencies(r.arrival_s, r.token_times_s).gaps.max(initial=0.0)
                                             for r in records if r.token_times_s), default=0.0),
        offered_prompt_tok_s=prompt / span, offered_output_tok_s=output / span,
        served_prompt_tok_s=prompt / window, served_output_tok_s=output / window,
        arrival_span_s=span, window_s=window,
        ttft_first_quarter_s=float(ttft_by_arrival[:quarter].mean()),
        ttft_last_quarter_s=float(ttft_by_arrival[-quarter:].mean()),
        token_iterations=int(stamps.size), iterations=summary["iterations"],
        iteration_ms={f"p{q}": float(1e3 * np.percentile(per_iteration, q)) for q in PERCENTILES})


def point_folders(roots: list[str]) -> list[str]:
    found = []
    for root in roots:
        found += sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "requests.jsonl"),
                                                               recursive=True))
    if not found:
        raise ValueError(f"no point folder (requests.jsonl) under {', '.join(roots)}")
    return found


def markdown(rows: list[tuple[str, dict, dict]]) -> str:
    lines = ["| run | executor | misses: TTFT / gap / both / unfinished | longest gap ms | prompt tok/s offered / served "
             "| output tok/s offered / served | arrival span / window s | TTFT mean, first / last quarter s "
             "| iterations with a token / all | s per iteration p10 / p50 / p90 / p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s, b in rows:
        m, it = b["misses"], b["iteration_ms"]
        executor = "simulated" if s["device"]["platform"] == "simulated" else f"measured, {s['device']['name']}"
        lines.append(
            f"| {s['label']} {s['workload']['rate']:g} req/s | {executor} | {m['ttft']} / {m['gap']} / {m['both']} / "
            f"{m['unfinished']} | {b['max_gap_ms']:.0f} | {b['offered_prompt_tok_s']:.0f} / "
            f"{b['served_prompt_tok_s']:.0f} | {b['offered_output_tok_s']:.0f} / {b['served_output_tok_s']:.0f} | "
            f"{b['arrival_span_s']:.0f} / {b['window_s']:.0f} | {b['ttft_first_quarter_s']:.2f} / "
            f"{b['ttft_last_quarter_s']:.2f} | {b['token_iterations']} / {b['iterations']} | "
            + " / ".join(f"{it[f'p{q}']:.1f}" for q in PERCENTILES) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="study folders (or any folders holding point folders)")
    p.add_argument("--json", help="write every figure here too")
    args = p.parse_args(argv)
    rows = []
    for folder in point_folders(args.folders):
        summary, records = read_point(folder)
        rows.append((folder, summary, breakdown(summary, records)))
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(folder=n, **b) for n, _, b in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
