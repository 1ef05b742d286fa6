"""Fit the cost table's `unit_bw` (bytes/s one attention work unit streams on one CTA) to a
traced serving run: the value whose plan-by-plan replay (lp_jax.bench.iteration_replay) has the
smallest median |simulated / measured - 1| over the run's iterations. One constant, one physical
meaning (the longest decode row's keys bound a layer's attention when the kernel cannot split
them); the grid cannot fit it, its decodes share one context.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lp_jax.bench import iteration_replay

LOW_BPS, HIGH_BPS = 1e9, 1e12  # the search range (bytes/s): 1 GB/s .. 1 TB/s per CTA


def replay_error(rows: list[dict], executor, unit_bw: float) -> float:
    """Median |simulated / measured - 1| of rows replayed on executor's table with unit_bw."""
    base = executor.table
    executor.table = base.with_params(device_params=dataclasses.replace(base.device_params, unit_bw=unit_bw))
    try:
        t = iteration_replay.replay(rows, executor)
    finally:
        executor.table = base
    return float(np.median(np.abs(t["simulated"] / t["measured"] - 1.0)))


def fit_unit_bw(rows: list[dict], executor, steps: int = 14) -> tuple[float, float]:
    """(unit_bw bytes/s, its median |error|): a golden-section search of log(unit_bw) over
    [LOW_BPS, HIGH_BPS] (the error is unimodal in it: too low charges every long decode, too
    high none)."""
    lo, hi = math.log(LOW_BPS), math.log(HIGH_BPS)
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = replay_error(rows, executor, math.exp(a)), replay_error(rows, executor, math.exp(b))
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = replay_error(rows, executor, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = replay_error(rows, executor, math.exp(b))
    x = (lo + hi) / 2.0
    return math.exp(x), replay_error(rows, executor, math.exp(x))
