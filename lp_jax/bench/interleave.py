"""Unconfounded comparisons: the order runs go in, and repeated runs summed up as mean and spread.

Running every rate of one configuration, then every rate of the next, confounds the schedule
with whatever drifts over the session (GPU clocks and temperature, a neighbour's load on the
host). So runs go rate-major: at each rate (lowest first), each repeat runs every configuration
once, in an order that alternates from one such block to the next (A B, B A, A B, ...) or is
shuffled per block by a seed. Each configuration then sees the same drift on average.

A metric's runs (repeats of one configuration at one rate) are summed up as a `Spread`: mean,
sample standard deviation (n - 1 in the denominator; None for one run), min and max.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

ORDERS = ("alternate", "shuffle")


@dataclass(frozen=True)
class Slot:
    """One run of an interleaved order: a configuration's key at a rate (requests/s), repeat k."""

    rate: float
    repeat: int
    key: Hashable


def interleaved_order(rates_of: dict[Hashable, Sequence[float]], repeats: int = 1, order: str = "alternate",
                      seed: int = 0) -> list[Slot]:
    """Every (rate, repeat, configuration) once, rate-major.

    rates_of: configuration key -> its rates (requests/s; configurations may have rates of their
    own: a block holds the configurations that have its rate). Blocks run lowest rate first,
    repeats of one rate one after the other; within block b the configurations go in the order
    of rates_of, reversed when b is odd ("alternate"), or in a permutation drawn per block from
    numpy's default_rng(seed) ("shuffle"). ValueError for an unknown order or repeats < 1.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    rng = np.random.default_rng(seed)
    keys = list(rates_of)
    slots, block = [], 0
    for rate in sorted({float(r) for rs in rates_of.values() for r in rs}):
        here = [k for k in keys if rate in {float(r) for r in rates_of[k]}]
        for rep in range(repeats):
            if order == "alternate":
                ranked = here[::-1] if block % 2 else here
            else:
                ranked = [here[i] for i in rng.permutation(len(here))]
            slots += [Slot(rate, rep, k) for k in ranked]
            block += 1
    return slots


@dataclass(frozen=True)
class Spread:
    """Runs of one metric: mean, sample std (None for one run), min, max, and n, the runs that
    had a value (a metric can be None in a run, e.g. no request finished)."""

    mean: float
    std: float | None
    lo: float
    hi: float
    n: int


def spread(values: Sequence[float | None]) -> Spread | None:
    """The Spread of the values that are not None (None if none is)."""
    v = np.asarray([x for x in values if x is not None], float)
    if v.size == 0:
        return None
    std = float(v.std(ddof=1)) if v.size > 1 else None
    return Spread(float(v.mean()), std, float(v.min()), float(v.max()), int(v.size))


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(float(x))


def aggregate(summaries: Sequence[dict]) -> dict:
    """The summaries of repeated runs as one summary of the same shape: every number a Spread
    over the runs (None where no run has one), everything else (strings, lists, flags) as the
    first run has it."""
    first = summaries[0]
    out = {}
    for key, value in first.items():
        values = [s.get(key) for s in summaries]
        if isinstance(value, dict):
            out[key] = aggregate([v if isinstance(v, dict) else {} for v in values])
        elif _is_number(value) or (value is None and any(_is_number(v) for v in values)):
            out[key] = spread([float(v) if _is_number(v) else None for v in values])
        else:
            out[key] = value
    return out


def spread_columns(flat: dict) -> dict:
    """A flat {name: Spread | value} row as CSV columns: name_mean, name_std, name_min, name_max,
    name_n for each Spread; other values as they are."""
    row = {}
    for name, value in flat.items():
        if isinstance(value, Spread):
            row.update({f"{name}_mean": value.mean, f"{name}_std": value.std, f"{name}_min": value.lo,
                        f"{name}_max": value.hi, f"{name}_n": value.n})
        else:
            row[name] = value
    return row
