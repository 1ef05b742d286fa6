"""Serving metrics on hand-computed examples."""

import math

import numpy as np
import pytest

from lp_jax.bench.metrics import (RequestRecord, distribution, latencies, max_rate_meeting_slo, parse_goodput,
                                  serving_metrics, slo_attainment)


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
        _rec(3, 10.2, [10.4, 10.6], status="cancelled", prompt=30, expert_bytes=5e5),  # aborted mid-output
    ]
    m = serving_metrics(records, ttft_bound_s=0.6, tbt_bound_s=0.25)
    assert m["num_requests"] == 4 and m["num_finished"] == 2
    assert m["duration_s"] == pytest.approx(1.5)  # first arrival 10.0 to last token 11.5
    # Finished requests only: the cancelled request's 2 tokens and 30-token prompt are no throughput.
    assert m["output_tokens"] == 4 and m["prompt_tokens"] == 150
    assert m["ttft_s"]["mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["tbt_s"]["mean"] == pytest.approx(0.25)  # gaps 0.2 and 0.3, pooled
    assert m["tpot_s"]["mean"] == pytest.approx(0.25)  # only the 3-token request has a TPOT
    assert m["e2e_s"]["p50"] == pytest.approx((1.0 + 1.0) / 2)
    assert m["throughput_tok_s"] == pytest.approx(4 / 1.5)
    assert m["total_throughput_tok_s"] == pytest.approx(154 / 1.5)
    assert m["request_throughput_per_s"] == pytest.approx(2 / 1.5)
    assert m["slo_attainment"] == pytest.approx(0.0)  # 0: gap 0.3 > 0.25; 1: TTFT 1.0; 2, 3: not finished
    # Goodput by default: TTFT <= 600 ms and TPOT <= 250 ms. Request 0 (TTFT 0.5, TPOT 0.25) meets
    # it although one gap is 0.3 s: goodput judges the mean gap; request 1's TTFT is 1.0 s.
    assert m["goodput_slo_ms"] == dict(ttft=600.0, tpot=250.0)
    assert m["request_goodput_per_s"] == pytest.approx(1 / 1.5)
    assert m["expert_bytes_per_request"] == pytest.approx(4e6 / 2)  # over the two finished requests
    assert m["expert_bytes_total"] == pytest.approx(4.5e6)  # everything the engine read


def test_request_goodput_as_vllm_counts_it():
    records = [
        _rec(0, 0.0, [0.5, 0.7, 0.9]),   # TTFT 500, TPOT 200, E2EL 900 ms
        _rec(1, 0.0, [0.2]),             # one token: TTFT 200, TPOT counts as 0, E2EL 200
        _rec(2, 1.0, [2.5, 2.6]),        # TTFT 1500, TPOT 100, E2EL 1600
        _rec(3, 1.0, [], status="rejected"),
    ]
    duration = 2.6
    goodput = lambda **slo: serving_metrics(records, 1.0, 1.0, slo)["request_goodput_per_s"] * duration  # noqa: E731
    assert goodput(ttft=500) == pytest.approx(2)             # requests 0 (at the bound: inclusive) and 1
    assert goodput(tpot=150) == pytest.approx(2)             # 1 (TPOT 0) and 2
    assert goodput(tpot=0) == pytest.approx(1)               # only the one-token request
    assert goodput(e2el=1000, tpot=250) == pytest.approx(2)  # 0 and 1
    assert goodput(ttft=2000, tpot=1000, e2el=5000) == pytest.approx(3)  # every finished request


@pytest.mark.parametrize("pairs, message", [
    (["ttft"], "expected NAME:MILLISECONDS"), (["itl:5"], "NAME one of ttft, tpot, e2el"),
    (["ttft:-1"], "milliseconds >= 0"), (["tpot:fast"], "milliseconds >= 0"),
])
def test_goodput_bounds_are_parsed_as_vllm_writes_them(pairs, message):
    assert parse_goodput(["ttft:500", "tpot:50.5", "e2el:3000"]) == dict(ttft=500.0, tpot=50.5, e2el=3000.0)
    with pytest.raises(ValueError, match=message):
        parse_goodput(pairs)


def test_serving_metrics_with_nothing_emitted():
    m = serving_metrics([_rec(0, 1.0, [], status="rejected")], 1.0, 1.0)
    assert m["duration_s"] == 0 and m["throughput_tok_s"] is None and m["ttft_s"]["mean"] is None
    assert not math.isnan(m["slo_attainment"])
    assert m["expert_bytes_per_request"] is None and m["request_goodput_per_s"] is None
