"""A run as vLLM's benchmark writes it (`vllm bench serve --save-result`), so that tooling made
for vLLM's results reads ours: vllm_result.json beside summary.json.

The definitions are vLLM's (vllm/benchmarks/serve.py, `calculate_metrics`), over the requests
that finished ("completed"; the others are "failed"):
    TTFT = first token - arrival; E2EL = last token - arrival;
    TPOT = (E2EL - TTFT) / (output tokens - 1), for outputs of two tokens or more;
    ITL = every gap between consecutive tokens, pooled over requests;
    {mean, median, std (population), p99} of each in ms, 0 where there are none (as vLLM writes);
    throughputs per second of the run (`duration`: first arrival to last token);
    request_goodput: finished requests meeting every --goodput bound per second (TPOT of a
    one-token output counts as 0; None without bounds);
    max_output_tokens_per_s: the most tokens emitted in one whole second counted from the first
    finished request's arrival; max_concurrent_requests: the most requests between arrival and last token at once.
Per-request lists (input_lens, output_lens, ttfts, itls, latencies, start_times, errors) are
those of vLLM's --save-detailed, one entry per request of the run in arrival order (seconds).
"""

from __future__ import annotations

import datetime
import math
from typing import Sequence

import numpy as np

from lp_jax.bench.metrics import RequestRecord, run_totals

PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")


def _stats_ms(name: str, values_s) -> dict[str, float]:
    v = np.asarray(values_s, float) * 1e3
    if v.size == 0:
        v = np.zeros(1)
    return {f"mean_{name}_ms": float(v.mean()), f"median_{name}_ms": float(np.median(v)),
            f"std_{name}_ms": float(v.std()), f"p99_{name}_ms": float(np.percentile(v, 99))}


def peak_tokens_per_second(token_times_s: Sequence[float], start_s: float, end_s: float) -> float:
    """Most tokens whose times fall in one second [start + k, start + k + 1)."""
    buckets = np.zeros(int(math.ceil(end_s - start_s)) + 1)
    for t in token_times_s:
        buckets[int(t - start_s)] += 1
    return float(buckets.max()) if buckets.size else 0.0


def peak_concurrency(intervals_s: Sequence[tuple[float, float]]) -> int:
    """Most half-open intervals [start, end) covering one instant."""
    events = sorted([(a, 1) for a, _ in intervals_s] + [(b, -1) for _, b in intervals_s])
    level = peak = 0
    for _, step in events:  # an end sorts before a start at the same instant
        level += step
        peak = max(peak, level)
    return peak


def burstiness_of(workload_info: dict) -> float | None:
    """vLLM's burstiness (gamma shape) of our arrivals: 1 for Poisson, 1 / cv^2 for gamma, None
    for a trace's own (possibly rescaled) times."""
    return dict(poisson=1.0, gamma=1.0 / workload_info["cv"] ** 2).get(workload_info["arrival"])


def vllm_result_of_run(records: Sequence[RequestRecord], summary: dict) -> dict:
    """vllm_result for a bench run's records and its summary.json."""
    info = summary["workload"]
    return vllm_result(records, goodput_slo_ms=summary["goodput_slo_ms"], label=summary["label"],
                       model=summary["model"], request_rate=info["rate"], burstiness=burstiness_of(info))


def vllm_result(records: Sequence[RequestRecord], *, goodput_slo_ms: dict[str, float], label: str, model: str,
                request_rate: float | None, burstiness: float | None) -> dict:
    """vLLM's result dict of one run. request_rate: requests/s (inf: all at once; None: the
    trace's own times); burstiness: vLLM's gamma shape (1 = Poisson, 1/cv^2 for gamma arrivals;
    None for trace times)."""
    totals = run_totals(records, goodput_slo_ms)
    done, lats, duration, good = totals.finished, totals.latencies, totals.duration_s, totals.good
    total_in, total_out = totals.prompt_tokens, totals.output_tokens
    per_s = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    by_id = dict(zip((r.id for r in done), lats))
    result = dict(
        date=datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
        endpoint_type="lp-jax", backend="lp-jax", label=label, model_id=model, tokenizer_id=None,
        num_prompts=len(records),
        request_rate="inf" if request_rate == float("inf") else request_rate,
        burstiness=burstiness, max_concurrency=None,
        duration=duration, completed=len(done), failed=len(records) - len(done),
        total_input_tokens=total_in, total_output_tokens=total_out,
        request_throughput=per_s(len(done)), request_goodput=per_s(good) if goodput_slo_ms else None,
        output_throughput=per_s(total_out), total_token_throughput=per_s(total_in + total_out),
        max_output_tokens_per_s=peak_tokens_per_second(
            [t for r in done for t in r.token_times_s], min(r.arrival_s for r in done),
            max(r.token_times_s[-1] for r in done)) if done else 0.0,
        max_concurrent_requests=peak_concurrency([(r.arrival_s, r.token_times_s[-1]) for r in done]),
        goodput_slo_ms=dict(goodput_slo_ms),
    )
    result.update(_stats_ms("ttft", [x.ttft for x in lats]))
    result.update(_stats_ms("tpot", [x.tpot for x in lats if x.tpot is not None]))
    result.update(_stats_ms("itl", np.concatenate([x.gaps for x in lats]) if lats else []))
    result.update(_stats_ms("e2el", [x.e2e for x in lats]))
    result.update(
        input_lens=[r.prompt_tokens for r in records],
        output_lens=[len(r.token_times_s) if r.finished else 0 for r in records],
        ttfts=[by_id[r.id].ttft if r.id in by_id else 0.0 for r in records],
        itls=[by_id[r.id].gaps.tolist() if r.id in by_id else [] for r in records],
        latencies=[by_id[r.id].e2e if r.id in by_id else 0.0 for r in records],
        start_times=[r.arrival_s for r in records],
        errors=["" if r.finished else r.status for r in records],
    )
    return result
