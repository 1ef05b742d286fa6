"""Serving workloads: request lengths (parametric presets or a CSV trace) and arrival times.

A `Workload` is N requests, each with an arrival time (seconds after the workload starts), a
prompt length and an output length (tokens). Lengths come from

- `sharegpt`: the ShareGPT trace Sarathi-Serve and the layered-prefill paper use (prompt mean
  2340 / median 1730 / p90 5696 tokens, output mean 439 / median 415 / p90 834), as generalized
  gamma distributions fitted to those three statistics;
- `arxiv-long`: the paper's arXiv summarization workload (prompt mean 9194 from the paper,
  median 7059 / p90 12985 from Sarathi-Serve's unfiltered set; output median 208). No smooth
  one-bump law has a mean that far above the median with so close a p90: the long articles make
  a heavy tail. So prompts are lognormal up to p90 (matching median and p90) and a Pareto tail
  capped at 65536 tokens above it, whose index is solved for the mean. Only the output median is
  published; a lognormal spread of 0.4 is assumed;
- any CSV with columns `num_prefill_tokens`, `num_decode_tokens` and optionally `arrived_at`
  (seconds), read from the path given.

Arrivals are Poisson or gamma (bursty: coefficient of variation `cv` of the gaps) at a rate in
requests per second, or the trace's own `arrived_at` times, rescaled to the rate if one is given.
Everything is drawn from one seeded numpy generator. Prompt token ids are drawn uniformly from
the vocabulary by `Workload.prompts`.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

ARRIVALS = ("poisson", "gamma", "trace")
CONTEXT_POLICIES = ("drop", "truncate")


# --- length distributions ---------------------------------------------------------------------
@functools.cache
def fit_gengamma(mean: float, median: float, p90: float):
    """A generalized gamma law (scipy.stats.gengamma) with this mean, median and p90."""
    def log_errors(x):
        a, c, scale = np.exp(x)
        d = stats.gengamma(a, c, scale=scale)
        return [math.log(d.mean() / mean), math.log(d.median() / median), math.log(d.ppf(0.9) / p90)]

    fit = optimize.least_squares(log_errors, np.log([0.1, 5.0, p90]), xtol=1e-12, ftol=1e-12)
    if fit.cost > 1e-8:
        raise ValueError(f"no generalized gamma law has mean {mean}, median {median} and p90 {p90}")
    a, c, scale = np.exp(fit.x)
    return stats.gengamma(a, c, scale=scale)


@dataclass(frozen=True)
class LognormalParetoTail:
    """Lognormal below the 90th percentile, a Pareto tail on [p90, cap] above it; the tail
    index is solved so that the whole law has the given mean. Values in tokens."""

    mean: float
    median: float
    p90: float
    cap: float

    @functools.cached_property
    def _params(self) -> tuple[float, float, float]:
        z90 = stats.norm.ppf(0.9)
        sigma = math.log(self.p90 / self.median) / z90
        # E[X; X below p90] of the lognormal, closed form.
        body = self.median * math.exp(sigma**2 / 2) * stats.norm.cdf(z90 - sigma)
        want = (self.mean - body) / 0.1
        lo_mean, hi_mean = self.p90, (self.cap - self.p90) / math.log(self.cap / self.p90)
        if not lo_mean < want < hi_mean:
            raise ValueError(f"mean {self.mean} unreachable with median {self.median}, p90 {self.p90}, cap {self.cap}")
        alpha = optimize.brentq(lambda a: self._tail_mean(a) - want, 1e-6, 50.0)
        return math.log(self.median), sigma, alpha

    def _tail_mean(self, alpha: float) -> float:
        m, c = self.p90, self.cap
        if abs(alpha - 1.0) < 1e-9:
            return m * math.log(c / m) / (1 - m / c)
        return alpha * m**alpha * (c ** (1 - alpha) - m ** (1 - alpha)) / ((1 - alpha) * (1 - (m / c) ** alpha))

    def ppf(self, u: np.ndarray) -> np.ndarray:
        mu, sigma, alpha = self._params
        body = np.exp(mu + sigma * stats.norm.ppf(np.minimum(u, 0.9)))
        v = np.clip((u - 0.9) / 0.1, 0.0, 1.0)
        tail = self.p90 / (1 - v * (1 - (self.p90 / self.cap) ** alpha)) ** (1 / alpha)
        return np.where(u < 0.9, body, tail)


@dataclass(frozen=True)
class LengthPreset:
    """Independent prompt and output length laws (objects with a `ppf`), in tokens."""

    name: str
    prompt: object
    output: object
    source: str

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n (prompt, output) lengths: int64 arrays [n], each >= 1."""
        u = rng.random((2, n))
        as_tokens = lambda x: np.maximum(1, np.rint(x)).astype(np.int64)  # noqa: E731
        return as_tokens(self.prompt.ppf(u[0])), as_tokens(self.output.ppf(u[1]))


def _presets() -> dict[str, LengthPreset]:
    return {
        "sharegpt": LengthPreset(
            "sharegpt", fit_gengamma(2340, 1730, 5696), fit_gengamma(439, 415, 834),
            "ShareGPT as filtered by Sarathi-Serve (8K context): generalized gamma fitted to "
            "prompt mean/median/p90 2340/1730/5696, output 439/415/834"),
        "arxiv-long": LengthPreset(
            "arxiv-long", LognormalParetoTail(9194, 7059, 12985, 2**16), stats.lognorm(0.4, scale=208),
            "arXiv summarization, unfiltered (layered-prefill paper): prompt mean/median/p90 9194/7059/12985 "
            "(lognormal body, Pareto tail to 65536); output lognormal, median 208, sigma 0.4 (assumed)"),
    }


PRESET_NAMES = ("sharegpt", "arxiv-long")


# --- CSV traces -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trace:
    """Rows of a length trace: prompt and output lengths (tokens) [n], arrival times (s) [n] or None."""

    path: str
    prompt: np.ndarray
    output: np.ndarray
    arrived_at: np.ndarray | None


def read_trace(path: str) -> Trace:
    """Read a CSV trace. ValueError naming the file, line and column of the first bad value."""
    try:
        f = open(path, newline="")
    except OSError as e:
        raise ValueError(f"cannot read trace {path}: {e.strerror}") from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header line")
        header = [h.strip() for h in header]
        missing = [c for c in ("num_prefill_tokens", "num_decode_tokens") if c not in header]
        if missing:
            raise ValueError(f"{path}:1: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
        cols = {name: header.index(name) for name in ("num_prefill_tokens", "num_decode_tokens", "arrived_at")
                if name in header}
        values: dict[str, list] = {name: [] for name in cols}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
            for name, i in cols.items():
                values[name].append(_parse_cell(path, line, name, row[i]))
    if not values["num_prefill_tokens"]:
        raise ValueError(f"{path}: no data rows")
    arrived = np.asarray(values["arrived_at"], float) if "arrived_at" in cols else None
    if arrived is not None and np.any(np.diff(arrived) < 0):
        line = int(np.argmax(np.diff(arrived) < 0)) + 3
        raise ValueError(f"{path}:{line}: column arrived_at: arrival times must not decrease")
    return Trace(path, np.asarray(values["num_prefill_tokens"], np.int64),
                 np.asarray(values["num_decode_tokens"], np.int64), arrived)


def _parse_cell(path: str, line: int, column: str, text: str) -> float:
    """A token count (integer >= 1; traces store them as '74' or '74.0') or a time (s, >= 0)."""
    try:
        x = float(text)
    except ValueError:
        x = float("nan")
    if column == "arrived_at":
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"{path}:{line}: column {column}: expected a time in seconds >= 0, got {text!r}")
        return x
    if not (math.isfinite(x) and x >= 1 and x == int(x)):
        raise ValueError(f"{path}:{line}: column {column}: expected a whole number of tokens >= 1, got {text!r}")
    return int(x)


# --- the workload -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """N requests: arrival_s [N] (seconds from the start, non-decreasing), prompt_tokens [N] and
    output_tokens [N] (tokens); `info` says how it was made (for summaries)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    seed: int
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.arrival_s)

    def prompts(self, vocab_size: int) -> list[list[int]]:
        """Token ids of every prompt: uniform over [0, vocab_size), seeded by the workload seed
        and the request index, so every schedule sees the same prompts."""
        return [np.random.default_rng((self.seed, i)).integers(0, vocab_size, int(n)).tolist()
                for i, n in enumerate(self.prompt_tokens)]

    def placeholder_prompts(self) -> list[np.ndarray]:
        """Prompts of the same lengths whose tokens are all 0, as read-only views of one shared
        buffer (no memory per request): for the simulator, which never reads token values."""
        zeros = np.zeros(int(self.prompt_tokens.max(initial=1)), np.int32)
        zeros.flags.writeable = False
        return [zeros[:int(n)] for n in self.prompt_tokens]


def make_workload(source: str, num_requests: int, rate: float | None = None, arrival: str = "poisson",
                  cv: float = 1.0, seed: int = 0, length_scale: float = 1.0, context_limit: int | None = None,
                  context_policy: str = "drop") -> Workload:
    """Build a workload.

    source: "sharegpt", "arxiv-long" or the path of a CSV trace. rate: requests per second
    (math.inf = everything at time 0); None only with arrival="trace" (the trace's own times).
    cv: coefficient of variation of the gaps for arrival="gamma" (1 = Poisson; > 1 bursty).
    length_scale: multiplies every prompt and output length (keeps the shape of the law; < 1
    for small models on the CPU). context_limit: longest prompt + output (tokens); requests over
    it are dropped (redrawn from the rest of the law or trace) or truncated (output cut to
    limit - 1 first, then the prompt to the room left), as context_policy says.
    """
    if not (isinstance(num_requests, int) and num_requests >= 1):
        raise ValueError(f"num_requests must be a positive integer, got {num_requests!r}")
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival process {arrival!r}; choose one of {', '.join(ARRIVALS)}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s (inf = all at once), got {rate!r}")
    if rate is None and arrival != "trace":
        raise ValueError(f"arrival {arrival!r} needs a rate (requests/s)")
    if not (cv > 0 and math.isfinite(cv)):
        raise ValueError(f"cv must be a finite number > 0, got {cv!r}")
    if not (length_scale > 0 and math.isfinite(length_scale)):
        raise ValueError(f"length_scale must be a finite number > 0, got {length_scale!r}")
    if context_policy not in CONTEXT_POLICIES:
        raise ValueError(f"unknown context policy {context_policy!r}; choose one of {', '.join(CONTEXT_POLICIES)}")
    if context_limit is not None and context_limit < 2:
        raise ValueError(f"context_limit must be >= 2 tokens (one prompt, one output), got {context_limit}")

    rng = np.random.default_rng(seed)
    limit = context_limit or np.iinfo(np.int64).max
    info = dict(source=source, num_requests=num_requests, rate=rate, arrival=arrival, cv=cv, seed=seed,
                length_scale=length_scale, context_limit=context_limit, context_policy=context_policy)
    presets = _presets()
    if source in presets:
        preset = presets[source]
        info["lengths"] = preset.source
        if arrival == "trace":
            raise ValueError(f"arrival 'trace' needs a CSV trace with an arrived_at column, not preset {source!r}")
        draw = lambda n: _scaled(*preset.sample(rng, n), length_scale)  # noqa: E731
        prompt, output, affected = _fit_context(draw, num_requests, limit, context_policy)
        times = _synthetic_arrivals(rng, num_requests, rate, arrival, cv)
    elif source.endswith(".csv") or os.path.exists(source):
        trace = read_trace(source)
        info["lengths"] = f"CSV trace {source} ({len(trace.prompt)} rows)"
        p_all, o_all = _scaled(trace.prompt, trace.output, length_scale)
        if arrival == "trace":
            if trace.arrived_at is None:
                raise ValueError(f"{source}: arrival 'trace' needs an arrived_at column")
            prompt, output, rows, affected = _trace_rows_in_order(p_all, o_all, num_requests, limit, context_policy)
            times = _trace_arrivals(trace.arrived_at[rows], rate)
        else:
            def draw(n):
                rows = rng.integers(0, len(p_all), n)
                return p_all[rows], o_all[rows]
            prompt, output, affected = _fit_context(draw, num_requests, limit, context_policy)
            times = _synthetic_arrivals(rng, num_requests, rate, arrival, cv)
    else:
        raise ValueError(f"unknown workload {source!r}: not a preset ({', '.join(PRESET_NAMES)}) "
                         f"and no such CSV file")
    info[f"requests_{'dropped' if context_policy == 'drop' else 'truncated'}"] = affected
    return Workload(times, prompt, output, seed, info)


def _scaled(prompt: np.ndarray, output: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    if scale == 1.0:
        return prompt, output
    return (np.maximum(1, np.rint(prompt * scale)).astype(np.int64),
            np.maximum(1, np.rint(output * scale)).astype(np.int64))


def _truncate(prompt: np.ndarray, output: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    output = np.minimum(output, limit - 1)
    return np.minimum(prompt, limit - output), output


def _fit_context(draw, n: int, limit: int, policy: str) -> tuple[np.ndarray, np.ndarray, int]:
    """n lengths from `draw(k) -> (prompt [k], output [k])` within the context limit, and how
    many were dropped (redrawn) or truncated."""
    if policy == "truncate":
        prompt, output = draw(n)
        over = int(np.sum(prompt + output > limit))
        return *_truncate(prompt, output, limit), over
    kept_p, kept_o, dropped = [], [], 0
    for _ in range(100):
        prompt, output = draw(n)
        ok = prompt + output <= limit
        dropped += int(np.sum(~ok))
        kept_p.append(prompt[ok])
        kept_o.append(output[ok])
        if sum(len(k) for k in kept_p) >= n:
            return np.concatenate(kept_p)[:n], np.concatenate(kept_o)[:n], dropped
    raise ValueError(f"almost no request fits the context limit of {limit} tokens: use a larger limit, "
                     f"a smaller length scale, or context policy 'truncate'")


def _trace_rows_in_order(prompt, output, n: int, limit: int, policy: str):
    """The first n rows of the trace (in file order, as their arrival times belong to them)
    within the context limit: (prompt [n], output [n], row indices [n], dropped/truncated)."""
    if policy == "truncate":
        if n > len(prompt):
            raise ValueError(f"the trace has {len(prompt)} rows, {n} requested")
        over = int(np.sum(prompt[:n] + output[:n] > limit))
        return *_truncate(prompt[:n], output[:n], limit), np.arange(n), over
    rows = np.flatnonzero(prompt + output <= limit)[:n]
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} trace rows fit the context limit of {limit} tokens, {n} requested")
    return prompt[rows], output[rows], rows, int(rows[-1] + 1 - n)


def _synthetic_arrivals(rng: np.random.Generator, n: int, rate: float, arrival: str, cv: float) -> np.ndarray:
    """Arrival times (s) [n], the first at 0: gaps exponential (poisson) or gamma with mean
    1/rate and coefficient of variation cv."""
    if math.isinf(rate):
        return np.zeros(n)
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, n - 1)
    else:
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def _trace_arrivals(arrived_at: np.ndarray, rate: float | None) -> np.ndarray:
    """The trace's times shifted to start at 0 and, given a rate, stretched or squeezed so that
    the mean rate over the selected requests equals it."""
    times = arrived_at - arrived_at[0]
    if rate is None or len(times) < 2:
        return times
    if math.isinf(rate):
        return np.zeros_like(times)
    span = times[-1]
    if span == 0:
        raise ValueError("the trace's selected requests all arrive at once: it has no rate to rescale")
    return times * ((len(times) - 1) / span) / rate
