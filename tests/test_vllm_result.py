"""vllm_result.json: vLLM's --save-result keys and definitions, against hand-computed values."""

import pytest

from lp_jax.bench.metrics import RequestRecord
from lp_jax.bench.vllm_result import burstiness_of, peak_concurrency, peak_tokens_per_second, vllm_result

# The scalar keys `vllm bench serve --save-result` writes (vllm/benchmarks/serve.py) for the
# percentile metrics ttft, tpot, itl, e2el at the default percentile 99.
VLLM_KEYS = {"date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate",
             "burstiness", "max_concurrency", "duration", "completed", "failed", "total_input_tokens",
             "total_output_tokens", "request_throughput", "request_goodput", "output_throughput",
             "total_token_throughput", "max_output_tokens_per_s", "max_concurrent_requests"} | {
    f"{stat}_{metric}_ms" for stat in ("mean", "median", "std", "p99") for metric in ("ttft", "tpot", "itl", "e2el")}


def _rec(i, arrival, times, status="finished", prompt=10):
    return RequestRecord(i, arrival, prompt, len(times), list(times), status)


RECORDS = [
    _rec(0, 0.0, [0.5, 0.7, 1.0], prompt=100),    # TTFT 0.5, gaps 0.2 0.3, TPOT 0.25, E2EL 1.0
    _rec(1, 0.5, [1.5], prompt=50),               # TTFT 1.0, no gaps, no TPOT, E2EL 1.0
    _rec(2, 1.0, [1.2, 1.3, 1.4, 2.2], prompt=20),  # TTFT 0.2, gaps 0.1 0.1 0.8, TPOT 1.0 / 3, E2EL 1.2
    _rec(3, 1.5, [], status="rejected", prompt=70),
]


def test_keys_and_hand_computed_values():
    r = vllm_result(RECORDS, goodput_slo_ms=dict(ttft=600, tpot=300), label="layered", model="tiny-qwen3-moe",
                    request_rate=2.0, burstiness=1.0)
    assert VLLM_KEYS <= set(r)
    assert (r["completed"], r["failed"], r["num_prompts"]) == (3, 1, 4)
    assert r["duration"] == pytest.approx(2.2)  # first arrival 0 to last token 2.2
    assert r["total_input_tokens"] == 170 and r["total_output_tokens"] == 8
    assert r["request_throughput"] == pytest.approx(3 / 2.2)
    assert r["output_throughput"] == pytest.approx(8 / 2.2)
    assert r["total_token_throughput"] == pytest.approx(178 / 2.2)
    assert r["request_goodput"] == pytest.approx(1 / 2.2)  # request 0 only: 1 has TTFT 1.0, 2 has TPOT 333 ms
    ttft, e2el = [500, 1000, 200], [1000, 1000, 1200]
    assert r["mean_ttft_ms"] == pytest.approx(1700 / 3) and r["median_ttft_ms"] == pytest.approx(500)
    assert r["std_ttft_ms"] == pytest.approx((sum((x - 1700 / 3) ** 2 for x in ttft) / 3) ** 0.5)  # population
    assert r["p99_ttft_ms"] == pytest.approx(500 + 0.98 * 500)  # numpy's linear interpolation
    # TPOT over requests with two tokens or more: 250 and 333.3 ms.
    assert r["mean_tpot_ms"] == pytest.approx((250 + 1000 / 3) / 2) and r["median_tpot_ms"] == pytest.approx(
        (250 + 1000 / 3) / 2)
    # ITL pools every gap: 200, 300, 100, 100, 800 ms.
    assert r["mean_itl_ms"] == pytest.approx(300) and r["median_itl_ms"] == pytest.approx(200)
    assert r["p99_itl_ms"] == pytest.approx(300 + 0.96 * 500)
    assert r["mean_e2el_ms"] == pytest.approx(3200 / 3) and r["median_e2el_ms"] == pytest.approx(1000)
    # Tokens per whole second from 0: [0, 1) holds 0.5 and 0.7; [1, 2) holds 1.0, 1.5, 1.2, 1.3, 1.4.
    assert r["max_output_tokens_per_s"] == 5
    assert r["max_concurrent_requests"] == 2  # [0, 1), [0.5, 1.5), [1.0, 2.2): 0 ends as 2 starts
    assert r["input_lens"] == [100, 50, 20, 70] and r["output_lens"] == [3, 1, 4, 0]
    assert r["itls"][0] == pytest.approx([0.2, 0.3]) and r["itls"][3] == [] and r["errors"][3] == "rejected"
    assert (r["request_rate"], r["burstiness"], r["model_id"], r["label"]) == (2.0, 1.0, "tiny-qwen3-moe", "layered")


def test_empty_distributions_are_zero_as_vllm_writes_them():
    r = vllm_result([_rec(0, 0.0, [0.4])], goodput_slo_ms={}, label="x", model="m", request_rate=float("inf"),
                    burstiness=None)
    assert r["mean_tpot_ms"] == r["p99_itl_ms"] == 0.0 and r["request_rate"] == "inf"
    assert r["request_goodput"] is None  # no bounds given, as vLLM writes it


def test_peaks_and_burstiness():
    # [0, 1) and [0.5, 1.5) overlap; [1.5, 2) starts as the second ends (half-open: not together).
    assert peak_concurrency([(0.0, 1.0), (0.5, 1.5), (1.5, 2.0)]) == 2
    assert peak_concurrency([(0.0, 1.0), (0.5, 1.5), (0.9, 2.0)]) == 3
    assert peak_tokens_per_second([0.1, 0.2, 1.1, 2.5, 2.6, 2.9], 0.0, 2.9) == 3
    assert burstiness_of(dict(arrival="poisson", cv=1.0)) == 1.0
    assert burstiness_of(dict(arrival="gamma", cv=2.0)) == 0.25  # vLLM's gamma shape: 1 / cv^2
    assert burstiness_of(dict(arrival="trace", cv=1.0)) is None
