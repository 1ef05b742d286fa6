"""A load test of `lp-jax serve` over loopback HTTP with the openai client (scripts/load_test_serve.py).

N streaming completions, at most C at once, each asking for an exact number of tokens
(ignore_eos); a seeded share of the clients goes away mid-stream (closes its stream after a random
number of tokens). Checked after each run: every other request got exactly max_tokens tokens
(counted as SSE events, as usage, and as token ids) with finish_reason "length" and [DONE]; the
server ends idle with no KV page held; the requests it aborted are no more than the clients that
left (a client may leave after its last token was already sent). The server's resident memory
is read from its /metrics after each run, so a second identical run shows whether it grows.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class LoadSpec:
    num_requests: int = 500
    concurrency: int = 32
    disconnect_fraction: float = 0.1
    prompt_tokens: tuple[int, int] = (16, 128)  # uniform, inclusive
    output_tokens: tuple[int, int] = (8, 64)
    seed: int = 0
    timeout_s: float = 1800.0  # the whole run; a run past it is reported as such


@dataclass
class Planned:
    prompt: list[int]
    max_tokens: int
    leave_after: int | None  # tokens after which the client disconnects (None: stays to the end)


def plan(spec: LoadSpec, vocab_size: int) -> list[Planned]:
    """The requests of one run: random token-id prompts (ids from 100 on, clear of special tokens)."""
    rng = np.random.default_rng(spec.seed)
    out = []
    for _ in range(spec.num_requests):
        n = int(rng.integers(spec.prompt_tokens[0], spec.prompt_tokens[1] + 1))
        m = int(rng.integers(spec.output_tokens[0], spec.output_tokens[1] + 1))
        leave = int(rng.integers(1, m)) if rng.random() < spec.disconnect_fraction else None
        out.append(Planned([int(t) for t in rng.integers(100, vocab_size, n)], m, leave))
    return out


@dataclass
class Outcome:
    max_tokens: int
    left: bool = False
    events: int = 0  # SSE chunks carrying a token
    token_ids: int = 0
    usage_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    ttft_s: float | None = None

    @property
    def exact(self) -> bool:
        return (self.error is None and self.finish_reason == "length"
                and self.events == self.token_ids == self.usage_tokens == self.max_tokens)


async def _one(client, model: str, req: Planned) -> Outcome:
    out = Outcome(req.max_tokens, left=req.leave_after is not None)
    start = time.perf_counter()
    try:
        stream = await client.completions.create(
            model=model, prompt=req.prompt, max_tokens=req.max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.usage is not None and not chunk.choices:
                out.usage_tokens = chunk.usage.completion_tokens
                continue
            choice = chunk.choices[0]
            if out.ttft_s is None:
                out.ttft_s = time.perf_counter() - start
            out.events += 1
            out.token_ids += len(choice.model_extra.get("token_ids") or [])
            out.finish_reason = choice.finish_reason or out.finish_reason
            if req.leave_after is not None and out.events >= req.leave_after:
                await stream.close()  # the client goes away mid-stream
                break
    except Exception as e:  # noqa: BLE001 - every failure is counted and reported, not raised
        out.error = f"{type(e).__name__}: {e}"
    return out


async def _run(url: str, model: str, requests: list[Planned], concurrency: int, timeout_s: float) -> list[Outcome]:
    import openai

    gate = asyncio.Semaphore(concurrency)
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600) as client:
        async def bounded(req):
            async with gate:
                return await _one(client, model, req)

        return await asyncio.wait_for(asyncio.gather(*(bounded(r) for r in requests)), timeout_s)


@dataclass
class RunReport:
    requests: int
    stayed: int
    left: int
    exact: int  # stayed and got exactly max_tokens tokens
    wrong: int  # stayed and did not
    errors: list[str] = field(default_factory=list)
    aborted_by_server: int = 0
    finished_by_server: int = 0
    pages_used_after: float = 0.0
    running_after: float = 0.0
    waiting_after: float = 0.0
    rss_mib_after: float = 0.0
    wall_s: float = 0.0
    output_tokens: int = 0
    ttft_mean_s: float | None = None

    @property
    def passed(self) -> bool:
        return (self.wrong == 0 and self.exact == self.stayed and self.pages_used_after == 0
                and self.aborted_by_server <= self.left and self.aborted_by_server + self.finished_by_server
                == self.requests)


def run_load(server, model: str, spec: LoadSpec, vocab_size: int) -> RunReport:
    """One run against `server` (a ServeProcess); waits for the server to go idle before reading
    its gauges."""
    requests = plan(spec, vocab_size)
    name = dict(model_name=model)
    aborted0 = server.metric("lp_jax:request_success_total", finished_reason="abort", **name)
    finished0 = sum(server.metric("lp_jax:request_success_total", finished_reason=r, **name) for r in ("length", "stop"))
    t = time.perf_counter()
    outcomes = asyncio.run(_run(server.url, model, requests, spec.concurrency, spec.timeout_s))
    wall = time.perf_counter() - t
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (server.metric("lp_jax:num_requests_running", **name)
                                           or server.metric("lp_jax:num_requests_waiting", **name)):
        time.sleep(0.2)
    time.sleep(0.5)  # aborts of the last clients to leave reach the engine thread
    stayed = [o for o in outcomes if not o.left]
    ttfts = [o.ttft_s for o in stayed if o.ttft_s is not None]
    return RunReport(
        requests=len(outcomes), stayed=len(stayed), left=len(outcomes) - len(stayed),
        exact=sum(o.exact for o in stayed), wrong=sum(not o.exact for o in stayed),
        errors=sorted({o.error for o in outcomes if o.error})[:5],
        aborted_by_server=int(server.metric("lp_jax:request_success_total", finished_reason="abort", **name)
                              - aborted0),
        finished_by_server=int(sum(server.metric("lp_jax:request_success_total", finished_reason=r, **name)
                                   for r in ("length", "stop")) - finished0),
        pages_used_after=server.metric("lp_jax:kv_pages_used", **name),
        running_after=server.metric("lp_jax:num_requests_running", **name),
        waiting_after=server.metric("lp_jax:num_requests_waiting", **name),
        rss_mib_after=server.metric("process_resident_memory_bytes") / 2**20, wall_s=wall,
        output_tokens=sum(o.events for o in outcomes), ttft_mean_s=float(np.mean(ttfts)) if ttfts else None)


def load_section(model: str, schedule: str, engine_options: list[str], spec: LoadSpec,
                 runs: list[RunReport]) -> dict:
    """The load test's part of serve_cpu.json."""
    first, last = runs[0], runs[-1]
    return {"model": model, "schedule": schedule, "engine_options": engine_options, "spec": asdict(spec),
            "runs": [asdict(r) | {"passed": r.passed} for r in runs],
            "rss_growth_mib": last.rss_mib_after - first.rss_mib_after,
            "rss_growth_per_run_mib": [b.rss_mib_after - a.rss_mib_after for a, b in zip(runs, runs[1:])],
            "passed": all(r.passed for r in runs)}


def load_markdown(section: dict) -> list[str]:
    spec = section["spec"]
    lines = [f"## Load test: {section['model']}, {section['schedule']} schedule", "",
             f"{spec['num_requests']} streaming completions per run through the openai client, at most "
             f"{spec['concurrency']} at once, prompts {spec['prompt_tokens'][0]}-{spec['prompt_tokens'][1]} tokens, "
             f"{spec['output_tokens'][0]}-{spec['output_tokens'][1]} output tokens each (ignore_eos), "
             f"{spec['disconnect_fraction']:.0%} of the clients leaving mid-stream; engine options "
             f"`{' '.join(section['engine_options']) or 'defaults'}`.", "",
             "| measure | " + " | ".join(f"run {i + 1}" for i in range(len(section["runs"]))) + " |",
             "| --- |" + " --- |" * len(section["runs"])]
    rows = [("requests", "requests"), ("clients that stayed", "stayed"), ("clients that left mid-stream", "left"),
            ("stayed, got exactly max_tokens tokens", "exact"), ("stayed, got a wrong count or an error", "wrong"),
            ("aborted by the server (client gone)", "aborted_by_server"),
            ("finished by the server", "finished_by_server"), ("KV pages held afterwards", "pages_used_after"),
            ("requests running / waiting afterwards", None), ("server RSS afterwards (MiB)", "rss_mib_after"),
            ("output tokens received", "output_tokens"), ("wall time (s)", "wall_s"),
            ("client TTFT, mean (ms)", "ttft_mean_s"), ("passed", "passed")]
    for label, key in rows:
        if key is None:
            cells = [f"{r['running_after']:.0f} / {r['waiting_after']:.0f}" for r in section["runs"]]
        elif key == "ttft_mean_s":
            cells = ["n/a" if r[key] is None else f"{r[key] * 1e3:.0f}" for r in section["runs"]]
        elif isinstance(section["runs"][0][key], float):
            cells = [f"{r[key]:.1f}" if key != "pages_used_after" else f"{r[key]:.0f}" for r in section["runs"]]
        else:
            cells = [str(r[key]) for r in section["runs"]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    steps = ", ".join(f"run {i + 1} to {i + 2}: {g:+.1f} MiB" for i, g in enumerate(section["rss_growth_per_run_mib"]))
    lines += ["", f"Server resident memory ({steps}) over {spec['num_requests']} requests a run; run 1 is the "
                  "first traffic the server sees. A client that leaves after the server has already written its "
                  "last token to the socket is finished, not aborted, by the server, so aborted <= left (checked), "
                  "and aborted + finished = requests (checked)."]
    errors = sorted({e for r in section["runs"] for e in r["errors"]})
    if errors:
        lines += ["", "Client errors seen: " + "; ".join(errors)]
    return lines
