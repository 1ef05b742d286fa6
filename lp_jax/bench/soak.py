"""A soak run through the incremental API: random arrivals, lengths, invalid requests and aborts,
checking that every request ends in a known state, no KV page leaks, host memory stays flat and
nothing is compiled while serving; `write_soak_results` writes what it found (scripts/soak.py)."""

from __future__ import annotations

import datetime
import json
import pathlib
import resource
import time
from dataclasses import asdict, dataclass, field

import jax
import numpy as np


def rss_mib() -> float:
    """Resident set size of this process now (MiB), from /proc; peak RSS where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class SoakReport:
    requests: int = 0  # add_request calls
    rejected: int = 0  # refused with ValueError (invalid on purpose)
    finished: int = 0
    aborted: int = 0
    lost: int = 0  # accepted but neither finished nor aborted at the end
    wrong_length: int = 0  # finished with neither max_tokens tokens nor a stop token last
    preemptions: int = 0
    iterations: int = 0
    leaked_pages: int = 0
    compiles_while_serving: int = 0
    wall_s: float = 0.0
    rss_mib: list[tuple[int, float]] = field(default_factory=list)  # (requests ended, RSS MiB)

    def rss_growth_mib_per_1k(self) -> float:
        """Slope of RSS over the second half of the run, MiB per 1000 ended requests."""
        pts = self.rss_mib[len(self.rss_mib) // 2:]
        if len(pts) < 2 or pts[-1][0] == pts[0][0]:
            return 0.0
        x, y = np.array(pts, float).T
        return float(np.polyfit(x, y, 1)[0] * 1000)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["rss_growth_mib_per_1k_requests"] = self.rss_growth_mib_per_1k()
        d["peak_rss_mib"] = max((r for _, r in self.rss_mib), default=0.0)
        return d


def run_soak(llm, num_requests: int, *, seed: int = 0, arrivals_per_step: float = 1.0, max_prompt: int = 100,
             max_tokens: int = 12, abort_probability: float = 0.1, invalid_fraction: float = 0.02,
             rss_every: int = 100, progress=None) -> SoakReport:
    """Serve `num_requests` random requests on `llm` (an lp_jax.LLM) and report what happened."""
    rng = np.random.default_rng(seed)
    vocab = llm.model_config.vocab_size
    eng = llm.engine
    report = SoakReport()
    compiles_before = eng.compiles_since_startup()
    live: dict[int, int] = {}  # request id -> max_tokens
    stops: dict[int, tuple[int, ...]] = {}
    start = time.perf_counter()
    while report.requests < num_requests or live:
        for _ in range(rng.poisson(arrivals_per_step) if report.requests < num_requests else 0):
            if report.requests >= num_requests:
                break
            report.requests += 1
            n, m = int(rng.integers(1, max_prompt + 1)), int(rng.integers(1, max_tokens + 1))
            prompt = [int(t) for t in rng.integers(0, vocab, n)]
            if rng.random() < invalid_fraction:
                prompt[int(rng.integers(0, n))] = vocab + 1  # out of the vocabulary: must be refused
            stop = (int(rng.integers(0, vocab)),) if rng.random() < 0.3 else ()
            try:
                rid = llm.add_request(prompt, max_tokens=m, stop_token_ids=stop,
                                      temperature=float(rng.choice([0.0, 0.7])), seed=int(rng.integers(0, 2**31)))
            except ValueError:
                report.rejected += 1
                continue
            live[rid], stops[rid] = m, stop
        if live and rng.random() < abort_probability:
            victim = int(rng.choice(list(live)))
            if llm.abort(victim):
                report.aborted += 1
                del live[victim], stops[victim]
        for out in llm.step():
            m = live.pop(out.request_id)
            stop = stops.pop(out.request_id)
            ok = len(out.token_ids) == m or (out.token_ids and out.token_ids[-1] in stop)
            report.wrong_length += not ok
            report.finished += 1
            report.preemptions += out.num_preemptions
            ended = report.finished + report.aborted
            if ended % rss_every == 0:
                report.rss_mib.append((ended, rss_mib()))
                if progress:
                    progress(report)
        report.iterations += 1
        if live and report.requests >= num_requests and not llm.has_unfinished():
            break  # the engine is idle but some requests never ended: they are lost
    report.wall_s = time.perf_counter() - start
    report.lost = len(live)
    report.leaked_pages = eng.blocks.usable_pages - eng.blocks.num_free()
    report.compiles_while_serving = eng.compiles_since_startup() - compiles_before
    return report


def write_soak_results(out_dir: pathlib.Path, report: SoakReport, *, model: str, schedule: str, num_pages: int,
                       requests: int) -> str:
    """Write soak_<device>.json (the report, what ran where) and .md (its table) into out_dir;
    returns the markdown."""
    device = jax.devices()[0].device_kind
    result = {"device": device, "date": datetime.date.today().isoformat(), "jax": jax.__version__,
              "model": model, "schedule": schedule, "num_pages": num_pages, **report.as_dict()}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"soak_{device.replace(' ', '_')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    rows = [("requests issued", report.requests), ("rejected (invalid on purpose)", report.rejected),
            ("finished", report.finished), ("aborted", report.aborted), ("lost", report.lost),
            ("finished with a wrong length", report.wrong_length), ("preemptions", report.preemptions),
            ("iterations", report.iterations), ("leaked KV pages", report.leaked_pages),
            ("compilations while serving", report.compiles_while_serving),
            ("peak RSS", f"{result['peak_rss_mib']:.0f} MiB"),
            ("RSS growth, second half", f"{result['rss_growth_mib_per_1k_requests']:+.2f} MiB per 1000 requests"),
            ("wall time", f"{report.wall_s:.0f} s")]
    md = [f"# Soak run: {model}, {schedule}, {device}, {result['date']}", "",
          f"{requests} requests through the incremental API: Poisson arrivals (1.5 per iteration), prompts 1-100 "
          f"tokens, 1-12 output tokens, 30% with a stop token, half sampled at temperature 0.7, 2% invalid, "
          f"an abort in 10% of iterations; KV pool of {num_pages} pages of 16 tokens.", "",
          "| measure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    return "\n".join(md)
