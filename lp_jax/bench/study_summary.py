"""`lp-jax study SPEC --summary`: the table of a study's finished points, repeats aggregated.

Per model and workload, a row per schedule and rate (compare's table: mean and p99 TTFT, TBT,
TPOT, E2E, throughput, SLO attainment, goodput, expert bytes per request, energy per token; over
repeats each cell is mean ± sample std (min..max)), and the highest rate at the SLO target.
Written as OUT/summary.md and OUT/summary.csv (a row per model, workload, schedule and rate,
every metric's _mean, _std, _min, _max and _n).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from lp_jax.bench.compare import _flatten, best_rate_lines, grouped, table_lines, write_rows
from lp_jax.bench.interleave import spread_columns
from lp_jax.bench.study import finished_record
from lp_jax.bench.study_spec import Study


@dataclass
class _Run:
    summary: dict


def finished_summaries(study: Study, out: str) -> list[tuple]:
    """(point, summary.json) of every finished point, in the study's order."""
    found = []
    for p in study.points:
        if finished_record(out, p) is not None:
            with open(os.path.join(out, p.folder, "summary.json")) as f:
                found.append((p, json.load(f)))
    return found


def summarize(study: Study, out: str) -> tuple[str, list[dict]]:
    """(markdown, CSV rows) of the finished points."""
    found = finished_summaries(study, out)
    lines = [f"# lp-jax study: {study.path}", "",
             f"{len(found)} of {len(study.points)} points finished (folder {out})."]
    rows = []
    sections: dict[tuple, list] = {}
    for p, s in found:
        sections.setdefault((p.model, p.spec["workload"]["source"]), []).append((p, s))
    labels = list(dict.fromkeys(p.config.label for p in study.points))
    for (model, source), runs in sections.items():
        # Table rows by schedule (the spec's order), then rate.
        runs.sort(key=lambda ps: (labels.index(ps[0].config.label), ps[0].rate, ps[0].repeat))
        groups = grouped([_Run(s) for _, s in runs])
        s0 = runs[0][1]
        w = s0["workload"]
        lines += ["", f"## {model} on {source}", "",
                  f"- {s0['device']['name']} ({s0['device']['platform']}), jax {s0['jax_version']}; "
                  f"{w['num_requests']} requests a point, {w['arrival']} arrivals, lengths x{w['length_scale']:g}, "
                  f"seed {w['seed']}; SLO TTFT <= {s0['slo']['ttft_s']:g} s, every gap <= "
                  f"{s0['slo']['tbt_s'] * 1e3:g} ms; cells over repeats: mean ± sample std (min..max)", ""]
        lines += table_lines(groups)
        lines += [""] + best_rate_lines(groups, [l for l in labels if any(g[0]["label"] == l for g in groups)],
                                        study.slo_target)
        for first, agg in groups:
            row = dict(model=model, workload=source, configuration=first["label"], rate=first["workload"]["rate"])
            row.update((k, v) for k, v in spread_columns(_flatten(agg)).items() if k not in row)
            rows.append(row)
    return "\n".join(lines) + "\n", rows


def write_summary(study: Study, out: str) -> tuple[str, list[str]]:
    """Write OUT/summary.md and OUT/summary.csv; (the markdown, their paths)."""
    text, rows = summarize(study, out)
    md, csv_path = os.path.join(out, "summary.md"), os.path.join(out, "summary.csv")
    with open(md, "w") as f:
        f.write(text)
    write_rows(rows, csv_path)
    return text, [md, csv_path]
