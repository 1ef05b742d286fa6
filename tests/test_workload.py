"""Workload generators: statistics of the presets, arrivals, seeds, context limits, CSV traces."""

import math
import os

import numpy as np
import pytest

from lp_jax.bench.workload import PRESET_NAMES, _presets, make_workload, read_trace

TRACES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "traces")
N = 20_000


def _close(actual, target, rel=0.05):
    assert actual == pytest.approx(target, rel=rel), f"{actual} not within {rel:.0%} of {target}"


def test_preset_names():
    assert tuple(_presets()) == PRESET_NAMES


def test_sharegpt_statistics():
    w = make_workload("sharegpt", N, rate=1.0, seed=1)
    p, o = w.prompt_tokens, w.output_tokens
    _close(p.mean(), 2340), _close(np.median(p), 1730), _close(np.percentile(p, 90), 5696)
    _close(o.mean(), 439), _close(np.median(o), 415), _close(np.percentile(o, 90), 834)


def test_arxiv_long_statistics():
    w = make_workload("arxiv-long", N, rate=1.0, seed=2)
    p = w.prompt_tokens
    _close(p.mean(), 9194), _close(np.median(p), 7059), _close(np.percentile(p, 90), 12985)
    _close(np.median(w.output_tokens), 208)
    assert p.max() <= 2**16


def test_length_scale_keeps_the_shape():
    w = make_workload("sharegpt", N, rate=1.0, seed=1, length_scale=0.25)
    _close(w.prompt_tokens.mean(), 2340 / 4), _close(np.median(w.output_tokens), 415 / 4)
    assert w.prompt_tokens.min() >= 1 and w.output_tokens.min() >= 1


def test_poisson_and_gamma_arrivals():
    gaps = np.diff(make_workload("sharegpt", N, rate=4.0, seed=3).arrival_s)
    _close(gaps.mean(), 0.25), _close(gaps.std() / gaps.mean(), 1.0)
    gaps = np.diff(make_workload("sharegpt", N, rate=4.0, arrival="gamma", cv=2.5, seed=3).arrival_s)
    _close(gaps.mean(), 0.25), _close(gaps.std() / gaps.mean(), 2.5)
    w = make_workload("sharegpt", 5, rate=math.inf)
    assert w.arrival_s.tolist() == [0.0] * 5


def test_same_seed_same_workload_other_seed_other():
    a, b = (make_workload("sharegpt", 50, rate=2.0, seed=7) for _ in range(2))
    c = make_workload("sharegpt", 50, rate=2.0, seed=8)
    for name in ("arrival_s", "prompt_tokens", "output_tokens"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert not np.array_equal(getattr(a, name), getattr(c, name))
    assert a.prompts(512) == b.prompts(512) != c.prompts(512)
    prompts = a.prompts(512)
    assert [len(x) for x in prompts] == a.prompt_tokens.tolist()
    assert all(0 <= t < 512 for x in prompts for t in x)
    assert make_workload("sharegpt", 50, rate=9.0, seed=7).prompts(512) == prompts  # rates share prompts


def test_context_limit_drop_and_truncate():
    drop = make_workload("sharegpt", 2000, rate=1.0, seed=4, context_limit=2048)
    assert np.all(drop.prompt_tokens + drop.output_tokens <= 2048)
    assert drop.info["requests_dropped"] > 0 and len(drop) == 2000
    trunc = make_workload("sharegpt", 2000, rate=1.0, seed=4, context_limit=2048, context_policy="truncate")
    assert np.all(trunc.prompt_tokens + trunc.output_tokens <= 2048) and np.all(trunc.prompt_tokens >= 1)
    assert trunc.info["requests_truncated"] > 0
    with pytest.raises(ValueError, match="almost no request fits"):
        make_workload("arxiv-long", 10, rate=1.0, context_limit=100)


@pytest.mark.parametrize("kwargs, match", [
    (dict(source="nope"), "unknown workload 'nope'"),
    (dict(rate=0.0), "rate must be > 0"),
    (dict(rate=-2.0), "rate must be > 0"),
    (dict(rate=None), "needs a rate"),
    (dict(arrival="uniform"), "unknown arrival"),
    (dict(arrival="trace"), "needs a CSV trace"),
    (dict(num_requests=0), "positive integer"),
    (dict(context_policy="clip"), "unknown context policy"),
    (dict(cv=0.0), "cv must be"),
])
def test_bad_arguments(kwargs, match):
    args = dict(source="sharegpt", num_requests=4, rate=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        make_workload(**args)


def _csv(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_csv_trace_with_arrivals(tmp_path):
    path = _csv(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n"
                          "10.0,100,5\n11.0,9000,5\n12.0,200.0,7\n14.0,300,9\n")
    w = make_workload(path, 3, arrival="trace", context_limit=1000)  # the 9000-token row is dropped
    assert w.prompt_tokens.tolist() == [100, 200, 300] and w.output_tokens.tolist() == [5, 7, 9]
    assert w.arrival_s.tolist() == [0.0, 2.0, 4.0] and w.info["requests_dropped"] == 1
    fast = make_workload(path, 3, rate=2.0, arrival="trace", context_limit=1000)
    np.testing.assert_allclose(fast.arrival_s, [0.0, 0.5, 1.0])  # 2 gaps in 1 s: mean rate 2/s
    sampled = make_workload(path, 50, rate=1.0, seed=1)  # lengths from random rows, Poisson arrivals
    assert set(sampled.prompt_tokens) <= {100, 9000, 200, 300}


@pytest.mark.parametrize("text, match", [
    ("num_prefill_tokens,num_decode_tokens\n10,5\n12,abc\n", r"t\.csv:3: column num_decode_tokens: .*'abc'"),
    ("num_prefill_tokens,num_decode_tokens\n10,5\n0,5\n", r"t\.csv:3: column num_prefill_tokens: .*'0'"),
    ("num_prefill_tokens,num_decode_tokens\n10,5\n2.5,5\n", r"t\.csv:3: column num_prefill_tokens"),
    ("num_prefill_tokens,num_decode_tokens\n10,5\n11,6\n12\n", r"t\.csv:4: 1 fields, the header has 2"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n1,10,5\n-1,10,5\n", r"t\.csv:3: column arrived_at"),
    ("arrived_at,num_prefill_tokens,num_decode_tokens\n2,10,5\n1,10,5\n", r"t\.csv:3: column arrived_at: .*decrease"),
    ("prompt,num_decode_tokens\n10,5\n", r"t\.csv:1: missing column\(s\) num_prefill_tokens"),
    ("", "empty file"),
    ("num_prefill_tokens,num_decode_tokens\n", "no data rows"),
])
def test_malformed_csv_names_line_and_column(tmp_path, text, match):
    path = _csv(tmp_path, text)
    with pytest.raises(ValueError, match=match):
        read_trace(path)
    with pytest.raises(ValueError, match=match):
        make_workload(path, 1, rate=1.0)


def test_missing_csv_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read trace"):
        make_workload(str(tmp_path / "absent.csv"), 1, rate=1.0)


@pytest.mark.skipif(not os.path.isdir(TRACES), reason="shared traces not present")
def test_shared_sharegpt_trace_matches_the_preset_targets():
    t = read_trace(os.path.join(TRACES, "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"))
    _close(t.prompt.mean(), 2340, rel=0.01), _close(np.median(t.output), 415, rel=0.01)
    w = make_workload(os.path.join(TRACES, "splitwise_conv.csv"), 100, arrival="trace")
    assert w.arrival_s[0] == 0.0 and np.all(np.diff(w.arrival_s) >= 0)
