"""One benchmark run: a workload served in real time by one engine, measured and written out.

Requests enter the engine when its clock reaches their arrival time; the runner steps the
engine while it has work and waits for the next arrival when it has none. A request's
`arrival_s` is its scheduled arrival, not the moment the runner got round to adding it, so a
long iteration that delays the add counts as queueing in its TTFT.

The runner reads time only through the engine's clock and waits through `wait_until`, so a
simulator with a virtual clock can drive it unchanged.

A short warm-up (requests of the workload's first shapes, all at once, run to completion)
precedes the measured window; it is excluded from every figure.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Callable

import jax
import numpy as np
from tqdm import tqdm

from lp_jax.bench.energy import IDLE_WINDOW_S, EnergyMeter, SimulatedEnergy, energy_fields
from lp_jax.bench.metrics import RequestRecord, serving_metrics
from lp_jax.bench.vllm_result import vllm_result_of_run
from lp_jax.bench.workload import Workload
from lp_jax.parallel.multihost import agreed_elapsed


@dataclass
class BenchResult:
    """The requests of one run and its summary (what requests.jsonl and summary.json hold)."""

    records: list[RequestRecord]
    summary: dict


def make_llm(model, configs, label: str, progress: bool = True, log=print, executor="model", trace: bool = False):
    """An lp_jax.LLM that serves each EngineConfig of `configs` in turn (`LLM.sharing`: one set of
    weights and executables, set to the first), with a progress bar over its start-up compilation
    and its start-up time logged (`executor`: the real forward pass or the simulator, `trace`: keep
    iteration records; see lp_jax.LLM)."""
    import lp_jax

    bar = tqdm(desc=f"{label}: compiling", unit="executable", disable=not progress, leave=False)
    count = [0]

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - count[0])
        count[0] = done

    t = time.perf_counter()
    try:
        llm = lp_jax.LLM.sharing(model, configs, progress=advance, executor=executor, trace=trace)
    finally:
        bar.close()
    if llm.simulation is None:
        log(f"[{label}] engine ready in {time.perf_counter() - t:.1f} s ({count[0]} executables compiled or "
            "taken from this process's cache)")
    else:
        log(f"[{label}] {llm.executor_label}")
    return llm


def run_bench(llm, workload: Workload, *, ttft_bound_s: float, tbt_bound_s: float, label: str | None = None,
              warmup: int = 0, progress: bool = True,
              wait_until: Callable[[float], None] | None = None,
              goodput_slo_ms: dict[str, float] | None = None, idle_s: float = IDLE_WINDOW_S) -> BenchResult:
    """Serve `workload` on `llm` (an lp_jax.LLM) and measure it.

    Every request asks for exactly its workload output length (greedy, end-of-sequence
    ignored). A request the engine refuses (ValueError: too long for its context or KV pool)
    is recorded as "rejected" with no tokens. wait_until(t) must return once the engine clock
    reads >= t; by default it sleeps, which is right for the default wall clock.
    goodput_slo_ms: vLLM's --goodput bounds (see `metrics.serving_metrics`). idle_s: seconds of
    idle before the measured window whose power is subtracted from its energy (GPU only; see
    `lp_jax.bench.energy`).
    """
    engine = llm.engine
    clock = engine.clock
    wait_until = wait_until or getattr(clock, "wait_until", None)
    if wait_until is None:
        if clock is not time.perf_counter:
            raise ValueError("the engine has its own clock: pass wait_until to advance it")
        wait_until = lambda t: time.sleep(max(0.0, t - clock()))  # noqa: E731
    # Token ids are drawn before the clock starts, so that drawing them costs the server no time.
    # The simulator never reads them: its prompts are zeros of the same lengths.
    simulated = llm.simulation is not None
    prompts = workload.placeholder_prompts() if simulated else workload.prompts(llm.model_config.vocab_size)
    _warm_up(llm, prompts[:warmup], workload.output_tokens[:warmup])

    n = len(workload)
    records: dict[int, RequestRecord] = {}
    meter = SimulatedEnergy() if simulated else EnergyMeter(jax.local_devices()[:1])  # this host's GPU
    meter.measure_idle(idle_s)  # the engine is idle now (warm-up done): its power at rest, this run
    before = (engine.total_expert_bytes, engine.total_expert_streamed_bytes, engine.state.iteration)
    bar = tqdm(total=n, desc=label or engine.config.schedule, unit="req", disable=not progress, leave=False)
    meter.start()
    t0 = clock()
    arrivals = t0 + workload.arrival_s
    next_i, shown = 0, -1
    while next_i < n or llm.has_unfinished():
        now = t0 + agreed_elapsed(clock() - t0)  # several processes admit by process 0's clock
        while next_i < n and arrivals[next_i] <= now:
            rec = submit(llm, next_i, prompts[next_i], int(workload.output_tokens[next_i]), float(arrivals[next_i]))
            records[rec.id] = rec
            next_i += 1
            if rec.status == "rejected":
                bar.update(1)
        if llm.has_unfinished():
            for out in llm.step():
                record_output(records[out.request_id], out)
                bar.update(1)
            if bar.n != shown:  # the postfix costs ~40 us: not every iteration of a fast (simulated) engine
                shown = bar.n
                bar.set_postfix(running=len(engine.state.running), waiting=len(engine.state.waiting), refresh=False)
        elif next_i < n:
            wait_until(float(arrivals[next_i]))
    energy = meter.stop()
    bar.close()

    ordered = sorted(records.values(), key=lambda r: r.arrival_s)
    window = dict(expert_bytes=engine.total_expert_bytes - before[0],
                  expert_streamed_bytes=engine.total_expert_streamed_bytes - before[1],
                  iterations=engine.state.iteration - before[2])
    summary = _summary(llm, workload, ordered, label, warmup, ttft_bound_s, tbt_bound_s, energy, window,
                       goodput_slo_ms)
    return BenchResult(ordered, summary)


def _warm_up(llm, prompts: list[list[int]], output_tokens) -> None:
    """Run these requests at once to completion, so that first-execution costs of the
    executables fall outside the measured window. (The engine keeps no prefix cache, so reusing
    measured prompts here does not help them later.)"""
    for prompt, out_len in zip(prompts, output_tokens):
        llm.add_request(prompt, max_tokens=int(out_len), ignore_eos=True)
    while llm.has_unfinished():
        llm.step()


def submit(llm, i: int, prompt: list[int], out_len: int, arrival_s: float) -> RequestRecord:
    """Add request i; its record (id -1 - i and status "rejected" if the engine refuses it)."""
    try:
        rid = llm.add_request(prompt, max_tokens=out_len, ignore_eos=True, arrival_s=arrival_s)
    except ValueError:
        return RequestRecord(-1 - i, arrival_s, len(prompt), out_len, [], "rejected")
    return RequestRecord(rid, arrival_s, len(prompt), out_len, [], "waiting")


def record_output(rec: RequestRecord, out) -> None:
    """Fill a request's record from its RequestOutput."""
    rec.token_times_s, rec.output_tokens = list(out.token_times_s), len(out.token_ids)
    rec.status, rec.expert_bytes, rec.expert_streamed_bytes = out.status, out.expert_bytes, out.expert_streamed_bytes


def _summary(llm, workload: Workload, records: list[RequestRecord], label: str | None, warmup: int,
             ttft_bound_s: float, tbt_bound_s: float, energy, window: dict,
             goodput_slo_ms: dict[str, float] | None) -> dict:
    """summary.json: the metrics, energy, and what was run where. window: the measured window's
    expert bytes both ways and its iterations (per-iteration figures are their ratio)."""
    metrics = serving_metrics(records, ttft_bound_s, tbt_bound_s, goodput_slo_ms)
    cfg = llm.engine_config
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "schedule"}
    options.update(num_pages=llm.engine.blocks.num_pages, max_model_len=cfg.model_len(llm.model_config),
                   executor_row_buckets=list(llm.engine.executor.buckets))
    if llm.simulation is None:
        dev = jax.devices()[0]
        device = dict(name=dev.device_kind, platform=dev.platform, count=jax.device_count(), host_cpus=os.cpu_count())
    else:
        table = llm.simulation.table
        device = dict(name=table.device_kind, platform="simulated", count=1, host_cpus=os.cpu_count(),
                      cost_table=table.name, provenance=table.provenance)
    return dict(
        label=label or cfg.schedule,
        executor=llm.executor_label,
        model=llm.model_config.name,
        schedule=cfg.schedule,
        options=options,
        workload=workload.info,
        **metrics,
        expert_bytes_window=window["expert_bytes"],
        expert_streamed_bytes_window=window["expert_streamed_bytes"],
        iterations=window["iterations"],
        expert_bytes_per_iteration=window["expert_bytes"] / window["iterations"] if window["iterations"] else None,
        expert_streamed_bytes_per_iteration=(window["expert_streamed_bytes"] / window["iterations"]
                                             if window["iterations"] else None),
        **energy_fields(energy, metrics["prompt_tokens"] + metrics["output_tokens"], metrics["output_tokens"]),
        warmup_requests=min(warmup, len(workload)),
        compiles_during_serving=llm.engine.compiles_since_startup(),
        device=device,
        jax_version=jax.__version__,
        python_version=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def prepare_out_dir(path: str) -> str:
    """Create `path` if needed and check that it is writable. ValueError saying why not."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".lp-jax-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"cannot write results to {path}: {e.strerror or e}") from None
    return path


def write_bench(result: BenchResult, out_dir: str) -> list[str]:
    """Write requests.jsonl (one request per line), summary.json and vllm_result.json (the run as
    `vllm bench serve --save-result --save-detailed` writes it) into out_dir; their paths."""
    prepare_out_dir(out_dir)
    req_path, sum_path = os.path.join(out_dir, "requests.jsonl"), os.path.join(out_dir, "summary.json")
    vllm_path = os.path.join(out_dir, "vllm_result.json")
    with open(req_path, "w") as f:
        for r in result.records:
            f.write(json.dumps(dataclasses.asdict(r)) + "\n")
    for path, data in ((sum_path, result.summary), (vllm_path, vllm_result_of_run(result.records, result.summary))):
        with open(path, "w") as f:
            json.dump(data, f, indent=2, default=_json_default)
            f.write("\n")
    return [req_path, sum_path, vllm_path]


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")
