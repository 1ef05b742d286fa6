"""Interleaved run order and the aggregation of repeated runs, against hand-written values."""

import math

import numpy as np
import pytest

from lp_jax.bench.interleave import Spread, aggregate, interleaved_order, spread, spread_columns


def triples(slots):
    return [(s.rate, s.repeat, s.key) for s in slots]


def test_alternate_is_rate_major_and_reverses_every_block():
    order = interleaved_order({"A": [2.0, 1.0], "B": [1.0, 2.0]}, repeats=2)
    assert triples(order) == [(1.0, 0, "A"), (1.0, 0, "B"), (1.0, 1, "B"), (1.0, 1, "A"),
                              (2.0, 0, "A"), (2.0, 0, "B"), (2.0, 1, "B"), (2.0, 1, "A")]


def test_configurations_with_rates_of_their_own():
    order = interleaved_order({"A": [1, 2], "B": [2, 3]})
    assert triples(order) == [(1.0, 0, "A"), (2.0, 0, "B"), (2.0, 0, "A"), (3.0, 0, "B")]


def test_shuffle_draws_each_block_from_the_seed():
    keys = ["A", "B", "C"]
    order = interleaved_order({k: [1.0, 2.0] for k in keys}, repeats=1, order="shuffle", seed=7)
    rng = np.random.default_rng(7)
    expected = [(rate, 0, keys[i]) for rate in (1.0, 2.0) for i in rng.permutation(3)]
    assert triples(order) == expected
    assert triples(interleaved_order({k: [1.0, 2.0] for k in keys}, order="shuffle", seed=7)) == expected


def test_bad_order_or_repeats():
    with pytest.raises(ValueError, match="unknown order"):
        interleaved_order({"A": [1.0]}, order="random")
    with pytest.raises(ValueError, match="repeats"):
        interleaved_order({"A": [1.0]}, repeats=0)


def test_spread_by_hand():
    s = spread([1.0, None, 2.0, 4.0])
    assert s.n == 3 and (s.lo, s.hi) == (1.0, 4.0)
    assert s.mean == pytest.approx(7 / 3)
    # deviations -4/3, -1/3, 5/3: squares 42/9, over n - 1 = 2
    assert s.std == pytest.approx(math.sqrt(7 / 3))
    assert spread([5.0]) == Spread(5.0, None, 5.0, 5.0, 1)
    assert spread([None, None]) is None


def test_aggregate_keeps_the_shape():
    runs = [dict(label="x", ttft_s=dict(mean=1.0, p99=3.0), slo_attainment=1.0, energy_j=None, rate=2.0),
            dict(label="x", ttft_s=dict(mean=3.0, p99=5.0), slo_attainment=0.5, energy_j=None, rate=2.0)]
    agg = aggregate(runs)
    assert agg["label"] == "x" and agg["energy_j"] is None
    assert agg["ttft_s"]["mean"] == Spread(2.0, math.sqrt(2.0), 1.0, 3.0, 2)
    assert agg["slo_attainment"].mean == 0.75
    cols = spread_columns({"ttft_s.mean": agg["ttft_s"]["mean"], "label": "x"})
    assert cols == {"ttft_s.mean_mean": 2.0, "ttft_s.mean_std": math.sqrt(2.0), "ttft_s.mean_min": 1.0,
                    "ttft_s.mean_max": 3.0, "ttft_s.mean_n": 2, "label": "x"}
