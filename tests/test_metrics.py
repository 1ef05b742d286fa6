"""Serving metrics on hand-computed examples."""

import math

import numpy as np
import pytest

from lp_jax.bench.metrics import (RequestRecord, distribution, latencies, max_rate_meeting_slo, serving_metrics,
                            slo_attainment)


def test_latencies_of_one_request():
    lat = latencies(1.0, [1.5, 1.7, 2.0])
    assert lat.ttft == pytest.approx(0.5)
    assert lat.e2e == pytest.approx(1.0)
    np.testing.assert_allclose(lat.gaps, [0.2, 0.3])
    assert lat.tpot == pytest.approx(0.25)  # (1.0 - 0.5) / (3 - 1)


def test_one_token_output_has_no_gaps_and_no_tpot():
    lat = latencies(2.0, [2.25])
    assert lat.ttft == lat.e2e == pytest.approx(0.25)
    assert lat.gaps.size == 0 and lat.tpot is None


def test_equal_timestamps_are_allowed():
    assert latencies(0.0, [1.0, 1.0]).gaps.tolist() == [0.0]


@pytest.mark.parametrize("arrival, times, match", [
    (0.0, [1.0, 0.5, 2.0], "not sorted: token 1 at 0.5"),
    (1.0, [0.5, 2.0], "precedes the arrival"),
    (0.0, [], "no output token"),
])
def test_bad_timestamps_are_rejected(arrival, times, match):
    with pytest.raises(ValueError, match=match):
        latencies(arrival, times)


def test_distribution():
    d = distribution([4.0, 1.0, 3.0, 2.0])
    # numpy's linear interpolation: p90 = 3 + 0.7 * 1, p99 = 3 + 0.97 * 1.
    assert d == pytest.approx(dict(mean=2.5, p50=2.5, p90=3.7, p99=3.97))
    assert distribution([]) == dict(mean=None, p50=None, p90=None, p99=None)


def _rec(i, arrival, times, status="finished", prompt=10, expert_bytes=0.0):
    return RequestRecord(i, arrival, prompt, len(times), list(times), status, expert_bytes)


def test_slo_needs_ttft_and_every_gap_within_bounds():
    records = [
        _rec(0, 0.0, [0.5, 0.6, 0.7]),         # meets: TTFT 0.5, gaps 0.1
        _rec(1, 0.0, [1.5, 1.6]),              # TTFT 1.5 > 1
        _rec(2, 0.0, [0.2, 0.3, 0.6, 0.7]),    # one gap of 0.3 > 0.2, the others fine
        _rec(3, 0.0, [0.9]),                   # one-token output: only TTFT counts, meets
        _rec(4, 0.0, [], status="waiting"),    # did not finish: a miss
    ]
    assert slo_attainment(records, ttft_bound_s=1.0, tbt_bound_s=0.2) == pytest.approx(2 / 5)


def test_zero_requests_within_slo():
    records = [_rec(0, 0.0, [2.0, 2.1]), _rec(1, 1.0, [1.1, 3.0])]
    assert slo_attainment(records, ttft_bound_s=0.5, tbt_bound_s=0.5) == 0.0


def test_slo_attainment_of_no_requests_is_an_error():
    with pytest.raises(ValueError):
        slo_attainment([], 1.0, 1.0)


def test_max_rate_meeting_slo():
    # 8 req/s meets the target again, but attainment did not *stay* >= 90% up to it.
    assert max_rate_meeting_slo([8, 1, 4, 2], [0.95, 1.0, 0.85, 0.95]) == 2
    assert max_rate_meeting_slo([1, 2], [0.5, 1.0]) is None
    assert max_rate_meeting_slo([1, 2], [0.9, 0.9]) == 2  # the bound is inclusive
    assert max_rate_meeting_slo([1, 2], [0.8, 0.7], target=0.75) == 1


def test_serving_metrics_by_hand():
    records = [
        _rec(0, 10.0, [10.5, 10.7, 11.0], prompt=100, expert_bytes=3e6),
        _rec(1, 10.5, [11.5], prompt=50, expert_bytes=1e6),
        _rec(2, 11.0, [], status="rejected", prompt=70),
    ]
    m = serving_metrics(records, ttft_bound_s=0.6, tbt_bound_s=0.25)
    assert m["num_requests"] == 3 and m["num_finished"] == 2
    assert m["duration_s"] == pytest.approx(1.5)  # first arrival 10.0 to last token 11.5
    assert m["output_tokens"] == 4 and m["prompt_tokens"] == 150  # the rejected prompt never ran
    assert m["ttft_s"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["tbt_s"]["mean"] == pytest.approx(0.25)  # gaps 0.2 and 0.3, pooled
    assert m["tpot_s"]["mean"] == pytest.approx(0.25)  # only the 3-token request has a TPOT
    assert m["e2e_s"]["p50"] == pytest.approx((1.0 + 1.0) / 2)
    assert m["throughput_tok_s"] == pytest.approx(4 / 1.5)
    assert m["total_throughput_tok_s"] == pytest.approx(154 / 1.5)
    assert m["request_throughput_per_s"] == pytest.approx(2 / 1.5)
    assert m["slo_attainment"] == pytest.approx(0.0)  # request 0: gap 0.3 > 0.25; 1: TTFT 1.0; 2: rejected
    assert m["expert_bytes_per_request"] == pytest.approx(4e6 / 3)
    assert m["expert_bytes_total"] == pytest.approx(4e6)


def test_serving_metrics_with_nothing_emitted():
    m = serving_metrics([_rec(0, 1.0, [], status="rejected")], 1.0, 1.0)
    assert m["duration_s"] == 0 and m["throughput_tok_s"] is None and m["ttft_s"]["mean"] is None
    assert not math.isnan(m["slo_attainment"])
