"""PNG plots of a comparison: one line per configuration (its label), one point per rate.

- ttft_cdf.png, tbt_cdf.png: CDFs of TTFT and of every gap between tokens, a panel per rate;
- slo_attainment.png: share of requests within the SLO against the request rate;
- pareto.png: mean TTFT against p99 TBT, each configuration's rates joined (the Pareto view);
- expert_traffic.png: expert-weight traffic per request (GB = 1e9 bytes) and per iteration (MB)
  against the rate, two ways: distinct experts x expert bytes, and row tiles streamed x expert bytes;
- energy_per_token.png: GPU energy per token (prompt + output), above idle and raw, or a note
  saying why it was not measured.

Input is the `BenchResult`s of the runs; the label and rate come from their summaries.
"""

from __future__ import annotations

import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402

from lp_jax.bench.metrics import latencies  # noqa: E402


def _by_label(results) -> dict[str, list]:
    """label -> its results sorted by rate."""
    groups = defaultdict(list)
    for r in results:
        groups[r.summary["label"]].append(r)
    return {k: sorted(v, key=lambda r: r.summary["workload"]["rate"]) for k, v in groups.items()}


def _rates(results) -> list[float]:
    return sorted({r.summary["workload"]["rate"] for r in results})


def _request_latencies(result):
    return [latencies(x.arrival_s, x.token_times_s) for x in result.records if x.finished]


def _cdf(ax, values, label):
    v = np.sort(np.asarray(values, float))
    if v.size:
        ax.plot(v, np.arange(1, v.size + 1) / v.size, label=label, drawstyle="steps-post")


def cdf_figure(results, what: str):
    """CDF of TTFT (what="ttft", seconds) or of the gaps between tokens (what="tbt", ms)."""
    rates = _rates(results)
    fig, axes = plt.subplots(1, len(rates), figsize=(4.2 * len(rates), 3.6), squeeze=False, sharey=True)
    for ax, rate in zip(axes[0], rates):
        for label, runs in _by_label(results).items():
            for r in runs:
                if r.summary["workload"]["rate"] != rate:
                    continue
                lats = _request_latencies(r)
                if what == "ttft":
                    _cdf(ax, [x.ttft for x in lats], label)
                else:
                    gaps = np.concatenate([x.gaps for x in lats]) if lats else []
                    _cdf(ax, np.asarray(gaps) * 1e3, label)
        ax.set_title(f"{rate:g} requests/s")
        ax.set_xlabel("time to first token (s)" if what == "ttft" else "time between tokens (ms)")
        if what == "tbt":
            # Gaps span decode-only iterations to prefill stalls: a log axis, plainly numbered.
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("cumulative fraction of " + ("requests" if what == "ttft" else "gaps") + " (0-1)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _per_rate_figure(results, y_of, ylabel: str, title: str):
    """One line per label: y_of(summary) against the rate."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, runs in _by_label(results).items():
        pts = [(r.summary["workload"]["rate"], y_of(r.summary)) for r in runs]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("request rate (requests/s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def slo_figure(results, target: float = 0.9):
    slo = results[0].summary["slo"]
    fig = _per_rate_figure(results, lambda s: 100 * s["slo_attainment"], "SLO attainment (% of requests)",
                           f"SLO: TTFT <= {slo['ttft_s']:g} s and every gap <= {slo['tbt_s'] * 1e3:g} ms")
    fig.axes[0].axhline(100 * target, color="grey", linestyle="--", linewidth=1)
    fig.axes[0].set_ylim(-3, 103)
    return fig


def pareto_figure(results):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, runs in _by_label(results).items():
        pts = [(r.summary["tbt_s"]["p99"], r.summary["ttft_s"]["mean"], r.summary["workload"]["rate"]) for r in runs
               if r.summary["tbt_s"]["p99"] is not None]
        if not pts:
            continue
        x, y, rates = zip(*pts)
        ax.plot(np.asarray(x) * 1e3, y, marker="o", label=label)
        for xi, yi, rate in pts:
            ax.annotate(f"{rate:g}/s", (xi * 1e3, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("p99 time between tokens (ms)")
    ax.set_ylabel("mean time to first token (s)")
    ax.set_title("latency trade-off (lower left is better; points labelled by rate)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def expert_traffic_figure(results):
    """Per request (left, GB) and per iteration (right, MB); solid: distinct experts x expert
    bytes (the paper's metric), dashed: row tiles the grouped matmul streams x expert bytes."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, unit, scale, per in ((axes[0], "GB", 1e-9, "request"), (axes[1], "MB", 1e-6, "iteration")):
        for label, runs in _by_label(results).items():
            color = None
            for kind, style, marker in (("expert_bytes", "-", "o"), ("expert_streamed_bytes", "--", "s")):
                pts = [(r.summary["workload"]["rate"], r.summary[f"{kind}_per_{per}"] * scale) for r in runs
                       if r.summary.get(f"{kind}_per_{per}") is not None]
                if pts:
                    line, = ax.plot(*zip(*pts), marker=marker, linestyle=style, color=color,
                                    label=f"{label} ({'distinct' if kind == 'expert_bytes' else 'streamed'})")
                    color = line.get_color()
        ax.set_xlabel("request rate (requests/s)")
        ax.set_ylabel(f"expert weights per {per} ({unit})")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    dev = results[0].summary["device"]["name"] if results else ""
    fig.suptitle(f"MoE expert-weight traffic on {dev}: circles, solid = distinct experts x expert bytes (the "
                 "paper's metric); squares, dashed = row tiles streamed x expert bytes", fontsize=9)
    fig.tight_layout()
    return fig


def energy_figure(results):
    """Per prompt + output token. Solid: above the idle power measured in the same run; dashed: raw."""
    fig = _per_rate_figure(results, lambda s: s.get("energy_mj_per_token_above_idle"), "GPU energy per token (mJ)",
                           "energy per prompt + output token: solid = above idle, dashed = raw")
    ax = fig.axes[0]
    colors = {line.get_label(): line.get_color() for line in ax.lines}
    for label, runs in _by_label(results).items():
        pts = [(r.summary["workload"]["rate"], r.summary["energy_mj_per_token"]) for r in runs
               if r.summary["energy_mj_per_token"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="s", linestyle="--", color=colors.get(label), label=f"{label} (raw)")
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        reasons = sorted({r.summary["energy_reason"] for r in results if r.summary["energy_reason"]})
        ax.text(0.5, 0.5, "not measured:\n" + "\n".join(reasons), ha="center", va="center", wrap=True,
                transform=ax.transAxes, fontsize=8)
    return fig


FIGURES = {
    "ttft_cdf.png": lambda results: cdf_figure(results, "ttft"),
    "tbt_cdf.png": lambda results: cdf_figure(results, "tbt"),
    "slo_attainment.png": slo_figure,
    "pareto.png": pareto_figure,
    "expert_traffic.png": expert_traffic_figure,
    "energy_per_token.png": energy_figure,
}


def write_plots(results, out_dir: str) -> list[str]:
    """Write every figure of FIGURES into out_dir; their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, make in FIGURES.items():
        fig = make(results)
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
