"""One traced study point's iterations replayed plan by plan on a cost table
(lp_jax.bench.iteration_replay), the error (simulated / measured - 1) broken down by what the
plan holds: decode-only by decode count, with a prefill chunk by decode count, by the chunk's end
position and by the decodes' summed context (KV tokens read); the time since the run's start; and
the host's gap (dispatch of iteration i minus read-back of i - 2: the host time the pipeline
does not hide); and least-squares fits of the residual on the longest and the summed decode
context. Writes breakdown.json, breakdown.md and a histogram PNG to --out.

    .venv/bin/python scripts/iteration_replay_breakdown.py POINT_FOLDER --executor sim:h200 --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sim_vs_measured  # noqa: E402

from lp_jax.bench import iteration_replay  # noqa: E402
from lp_jax.bench.iteration_log import ITERATIONS_FILE, read_iterations  # noqa: E402

DECODE_BINS = (0, 1, 4, 8, 16, 24, 64, 10**9)
POSITION_BINS = (0, 2048, 4096, 8192, 16384, 32768, 10**9)
KV_BINS = (0, 60_000, 100_000, 140_000, 10**9)
LONGEST_BINS = (0, 10_000, 15_000, 20_000, 30_000, 10**9)
TIME_BINS_S = 20.0


def features(rows: list[dict]) -> dict:
    """Per iteration after the first: decodes, prefill tokens, the chunk's end position, summed
    decode context (tokens), seconds since the first dispatch, host gap (s; nan for the second)."""
    body = rows[1:]
    start = np.array([r["start_s"] for r in rows])
    end = np.array([r["end_s"] for r in rows])
    return dict(decodes=np.array([len(r["decode_contexts"]) for r in body]),
                prefill_tokens=np.array([sum(e - s for _, s, e, _, _ in r["prefill"]) for r in body]),
                position=np.array([max([e for _, _, e, _, _ in r["prefill"]], default=0) for r in body]),
                kv_tokens=np.array([sum(r["decode_contexts"]) for r in body]),
                longest=np.array([max(r["decode_contexts"], default=0) for r in body]),
                time_s=start[1:] - start[0],
                host_gap_s=np.r_[np.nan, start[2:] - end[:-2]])


def group(name: str, mask: np.ndarray, times: dict, f: dict) -> dict | None:
    if not mask.any():
        return None
    m, s = times["measured"][mask], times["simulated"][mask]
    err = s / m - 1.0
    gap = f["host_gap_s"][mask]
    return dict(group=name, count=int(mask.sum()), measured_p50_ms=1e3 * float(np.median(m)),
                simulated_p50_ms=1e3 * float(np.median(s)),
                **{f"err_p{q}": float(np.percentile(err, q)) for q in (10, 50, 90)},
                host_gap_p50_ms=1e3 * float(np.nanmedian(gap)) if np.isfinite(gap).any() else None)


def breakdown(times: dict, f: dict) -> list[dict]:
    """The error's groups (see the module docstring), each {group, count, p50s, err p10/50/90}."""
    pre = f["prefill_tokens"] > 0
    out = [group("all", np.ones(pre.size, bool), times, f), group("decode-only", ~pre, times, f),
           group("with prefill", pre, times, f)]
    for kind, base in (("decode-only", ~pre), ("with prefill", pre)):
        for lo, hi in zip(DECODE_BINS, DECODE_BINS[1:]):
            out.append(group(f"{kind}, decodes [{lo}, {hi})", base & (f["decodes"] >= lo) & (f["decodes"] < hi), times, f))
    mixed = pre & (f["decodes"] >= 4)
    for lo, hi in zip(POSITION_BINS, POSITION_BINS[1:]):
        out.append(group(f"prefill + >= 4 decodes, chunk end [{lo}, {hi})",
                         mixed & (f["position"] >= lo) & (f["position"] < hi), times, f))
    for lo, hi in zip(KV_BINS, KV_BINS[1:]):
        out.append(group(f"prefill + >= 4 decodes, decode KV tokens [{lo}, {hi})",
                         mixed & (f["kv_tokens"] >= lo) & (f["kv_tokens"] < hi), times, f))
    for lo, hi in zip(LONGEST_BINS, LONGEST_BINS[1:]):
        out.append(group(f"prefill + >= 4 decodes, longest decode context [{lo}, {hi})",
                         mixed & (f["longest"] >= lo) & (f["longest"] < hi), times, f))
    for lo in np.arange(0.0, f["time_s"].max() + TIME_BINS_S, TIME_BINS_S):
        out.append(group(f"prefill + >= 4 decodes, run time [{lo:.0f}, {lo + TIME_BINS_S:.0f}) s",
                         mixed & (f["time_s"] >= lo) & (f["time_s"] < lo + TIME_BINS_S), times, f))
    return [g for g in out if g is not None]


def residual_fits(times: dict, f: dict) -> list[dict]:
    """Least squares of the residual (measured - simulated, ms) on the longest and on the summed
    decode context (per 10K tokens), over the mixed iterations (a prefill chunk and >= 4 decodes)
    and the decode-only ones: which context the missing time follows."""
    pre, res = f["prefill_tokens"] > 0, 1e3 * (times["measured"] - times["simulated"])
    out = []
    for kind, mask in (("prefill + >= 4 decodes", pre & (f["decodes"] >= 4)), ("decode-only", ~pre & (f["decodes"] > 0))):
        for regressors in (("longest",), ("kv_tokens",), ("longest", "kv_tokens")):
            X = np.c_[np.ones(mask.sum()), *[f[k][mask] / 1e4 for k in regressors]]
            coef, *_ = np.linalg.lstsq(X, res[mask], rcond=None)
            out.append(dict(iterations=kind, intercept_ms=float(coef[0]),
                            ms_per_10k=dict(zip(regressors, map(float, coef[1:]))),
                            residual_sd_ms=float(np.std(res[mask] - X @ coef)), count=int(mask.sum())))
    return out


def markdown(groups: list[dict]) -> str:
    lines = ["| iterations | count | p50 measured / simulated ms | error p10 / p50 / p90 | host gap p50 ms |",
             "|---|---|---|---|---|"]
    for g in groups:
        gap = "-" if g["host_gap_p50_ms"] is None else f"{g['host_gap_p50_ms']:.2f}"
        lines.append(f"| {g['group']} | {g['count']} | {g['measured_p50_ms']:.1f} / {g['simulated_p50_ms']:.1f} | "
                     f"{100 * g['err_p10']:+.0f} / {100 * g['err_p50']:+.0f} / {100 * g['err_p90']:+.0f} % | {gap} |")
    return "\n".join(lines) + "\n"


def histogram(times: dict, f: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    err = 100 * (times["simulated"] / times["measured"] - 1.0)
    pre = f["prefill_tokens"] > 0
    bins = np.arange(-60, 41, 2)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist([err[~pre], err[pre]], bins=bins, stacked=True, label=["decode-only", "with prefill"])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("simulated / measured - 1 (%), per iteration")
    ax.set_ylabel("iterations")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("point", help="a traced study point's folder (point.json, summary.json, iterations.jsonl)")
    p.add_argument("--executor", default="sim:h200")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    (replay,) = sim_vs_measured.study_replays(args.point)
    executor = sim_vs_measured.simulated_llm({}, replay, args.executor).engine.executor
    rows = read_iterations(os.path.join(args.point, ITERATIONS_FILE))
    times = iteration_replay.replay(rows, executor)
    f = features(rows)
    groups, fits = breakdown(times, f), residual_fits(times, f)
    os.makedirs(args.out, exist_ok=True)
    label = f"{replay.model} {replay.label} at {replay.rate:g} req/s on {args.executor}"
    with open(os.path.join(args.out, "breakdown.json"), "w") as fh:
        json.dump(dict(point=args.point, executor=args.executor, label=label, groups=groups, residual_fits=fits), fh, indent=1)
    with open(os.path.join(args.out, "breakdown.md"), "w") as fh:
        fh.write(f"# Per-iteration replay: {label}\n\n" + markdown(groups))
    histogram(times, f, os.path.join(args.out, "per_iteration_error.png"), label)
    print(markdown(groups))
    print(json.dumps(fits, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
