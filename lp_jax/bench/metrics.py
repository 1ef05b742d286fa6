"""Serving metrics with vLLM's benchmark definitions, from per-token timestamps.

For one request (times in seconds on one clock):
    TTFT = first token - arrival
    TBT (ITL) = every gap between consecutive tokens (none for a one-token output)
    TPOT = (E2E - TTFT) / (output tokens - 1), for outputs of two tokens or more
    E2E = last token - arrival
Distributions are reported as {mean, p50, p90, p99}; the TBT distribution pools every gap of
every request. A request meets the SLO when its TTFT and *every* one of its gaps are within
their bounds (the layered-prefill paper's check); SLO attainment is the share of all requests
that meet it, counting requests that did not finish as misses.

Request goodput is vLLM's (`vllm bench serve --goodput ttft:MS tpot:MS e2el:MS`): finished
requests meeting every given bound per second of the run, TPOT taken as 0 for a one-token
output. Unlike attainment it judges the mean gap (TPOT), not every gap.

Nothing here reads a clock: the same code serves real runs and simulated ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class RequestRecord:
    """One request of a run (one line of requests.jsonl). Times in seconds on the engine clock;
    token_times_s[i] is when output token i was emitted; expert_bytes is the expert-weight
    traffic (bytes) attributed to the request as distinct experts x bytes per expert (the
    paper's metric), expert_streamed_bytes as row tiles x bytes per expert (what the grouped
    matmuls stream)."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    token_times_s: list[float] = field(default_factory=list)
    status: str = "finished"
    expert_bytes: float = 0.0
    expert_streamed_bytes: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass(frozen=True)
class Latencies:
    """Latencies of one request, seconds: ttft, e2e, the gaps [n_tokens - 1], tpot (None for a
    one-token output)."""

    ttft: float
    e2e: float
    gaps: np.ndarray
    tpot: float | None


def latencies(arrival_s: float, token_times_s: Sequence[float]) -> Latencies:
    """Latencies of one request. ValueError if it has no token, if a token precedes the
    arrival, or if the timestamps are not in order."""
    t = np.asarray(token_times_s, float)
    if t.size == 0:
        raise ValueError("a request with no output token has no latencies")
    if t[0] < arrival_s:
        raise ValueError(f"first token at {t[0]} s precedes the arrival at {arrival_s} s")
    gaps = np.diff(t)
    if np.any(gaps < 0):
        i = int(np.argmax(gaps < 0))
        raise ValueError(f"token timestamps are not sorted: token {i + 1} at {t[i + 1]} s follows {t[i]} s")
    ttft, e2e = float(t[0] - arrival_s), float(t[-1] - arrival_s)
    tpot = (e2e - ttft) / (t.size - 1) if t.size > 1 else None
    return Latencies(ttft, e2e, gaps, tpot)


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    """{mean, p50, p90, p99} of the values (None each when there are none)."""
    v = np.asarray(values, float)
    if v.size == 0:
        return dict(mean=None, p50=None, p90=None, p99=None)
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return dict(mean=float(v.mean()), p50=float(p50), p90=float(p90), p99=float(p99))


def meets_slo(lat: Latencies, ttft_bound_s: float, tbt_bound_s: float) -> bool:
    """TTFT within its bound and every gap between tokens within the TBT bound."""
    return lat.ttft <= ttft_bound_s and bool(np.all(lat.gaps <= tbt_bound_s))


def slo_attainment(records: Sequence[RequestRecord], ttft_bound_s: float, tbt_bound_s: float) -> float:
    """Share of requests (0..1) that finished and met the SLO. ValueError for no requests."""
    if not records:
        raise ValueError("SLO attainment of no requests is undefined")
    met = sum(r.finished and meets_slo(latencies(r.arrival_s, r.token_times_s), ttft_bound_s, tbt_bound_s)
              for r in records)
    return met / len(records)


GOODPUT_METRICS = ("ttft", "tpot", "e2el")


def parse_goodput(pairs: Sequence[str]) -> dict[str, float]:
    """vLLM's --goodput form, e.g. ["ttft:500", "tpot:50"] -> {"ttft": 500.0, "tpot": 50.0}
    (milliseconds). ValueError naming the bad pair."""
    slo: dict[str, float] = {}
    for pair in pairs:
        name, sep, raw = pair.partition(":")
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(f"goodput bound {pair!r}: expected NAME:MILLISECONDS with NAME one of "
                             f"{', '.join(GOODPUT_METRICS)}")
        if not value >= 0:
            raise ValueError(f"goodput bound {pair!r}: the bound must be a number of milliseconds >= 0")
        slo[name] = value
    return slo


def goodput_text(slo_ms: dict[str, float]) -> str:
    """"TTFT <= 500 ms, TPOT <= 50 ms": the bounds as a reader reads them."""
    return ", ".join(f"{name.upper()} <= {bound:g} ms" for name, bound in slo_ms.items())


def meets_goodput_slo(lat: Latencies, slo_ms: dict[str, float]) -> bool:
    """Every bound given in slo_ms ({ttft, tpot, e2el}: milliseconds) met; TPOT of a one-token
    output counts as 0, as vLLM counts it."""
    value_s = dict(ttft=lat.ttft, tpot=lat.tpot or 0.0, e2el=lat.e2e)
    return all(value_s[name] <= bound / 1e3 for name, bound in slo_ms.items())


def max_rate_meeting_slo(rates: Sequence[float], attainments: Sequence[float], target: float = 0.9) -> float | None:
    """Highest measured rate up to which attainment stays >= target at every measured rate
    (no interpolation); None if the lowest rate already misses it."""
    best = None
    for rate, att in sorted(zip(rates, attainments)):
        if att < target:
            break
        best = rate
    return best


@dataclass(frozen=True)
class RunTotals:
    """What both reports of a run (summary.json, vllm_result.json) count: the finished requests
    and their latencies, the window (first arrival to last token of any request, seconds), the
    finished requests' prompt and output tokens, and how many of them meet the goodput bounds."""

    finished: list[RequestRecord]
    latencies: list[Latencies]
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    good: int


def run_totals(records: Sequence[RequestRecord], goodput_slo_ms: dict[str, float]) -> RunTotals:
    """RunTotals of a run's requests. ValueError for no requests."""
    if not records:
        raise ValueError("no requests to measure")
    done = [r for r in records if r.finished]
    lats = [latencies(r.arrival_s, r.token_times_s) for r in done]
    start = min(r.arrival_s for r in records)
    end = max([t for r in records for t in r.token_times_s[-1:]], default=start)
    return RunTotals(done, lats, end - start, sum(r.prompt_tokens for r in done),
                     sum(len(r.token_times_s) for r in done), sum(meets_goodput_slo(x, goodput_slo_ms) for x in lats))


def serving_metrics(records: Sequence[RequestRecord], ttft_bound_s: float, tbt_bound_s: float,
                    goodput_slo_ms: dict[str, float] | None = None) -> dict:
    """Everything summary.json reports about latency, throughput and expert traffic.

    Latency distributions, throughputs and expert bytes per request count finished requests
    only (as vLLM counts successful ones): a cancelled request's partial output is no
    throughput. Throughputs are per second of the run's window, from the first arrival to the
    last token of any request (None for an empty window): output tokens (`throughput_tok_s`,
    vLLM's output throughput), prompt + output tokens, finished requests, and the request
    goodput of `goodput_slo_ms` (vLLM's --goodput bounds in ms; default TTFT <= ttft_bound_s and
    TPOT <= tbt_bound_s). Expert bytes in bytes, counted two ways (distinct experts and what the
    grouped matmuls stream, see RequestRecord).
    """
    if goodput_slo_ms is None:
        goodput_slo_ms = dict(ttft=ttft_bound_s * 1e3, tpot=tbt_bound_s * 1e3)
    totals = run_totals(records, goodput_slo_ms)
    done, lats, duration, good = totals.finished, totals.latencies, totals.duration_s, totals.good
    prompt_tokens, out_tokens = totals.prompt_tokens, totals.output_tokens
    per_s = (lambda n: n / duration) if duration > 0 else (lambda n: None)
    return dict(
        num_requests=len(records),
        num_finished=len(done),
        duration_s=duration,
        prompt_tokens=prompt_tokens,
        output_tokens=out_tokens,
        ttft_s=distribution([x.ttft for x in lats]),
        tbt_s=distribution(np.concatenate([x.gaps for x in lats]) if lats else []),
        tpot_s=distribution([x.tpot for x in lats if x.tpot is not None]),
        e2e_s=distribution([x.e2e for x in lats]),
        throughput_tok_s=per_s(out_tokens),
        total_throughput_tok_s=per_s(prompt_tokens + out_tokens),
        request_throughput_per_s=per_s(len(done)),
        slo=dict(ttft_s=ttft_bound_s, tbt_s=tbt_bound_s),
        slo_attainment=slo_attainment(records, ttft_bound_s, tbt_bound_s),
        goodput_slo_ms=dict(goodput_slo_ms),
        request_goodput_per_s=per_s(good),
        expert_bytes_total=float(sum(r.expert_bytes for r in records)),
        expert_bytes_per_request=float(np.mean([r.expert_bytes for r in done])) if done else None,
        expert_streamed_bytes_total=float(sum(r.expert_streamed_bytes for r in records)),
        expert_streamed_bytes_per_request=float(np.mean([r.expert_streamed_bytes for r in done])) if done else None,
    )
