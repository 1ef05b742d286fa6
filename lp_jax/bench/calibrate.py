"""Calibration: time the real executor's compiled calls over a grid, fit the simulator's cost model
to them, and write a cost table (`lp-jax calibrate`).

Grid (each point one iteration of one call, plus the sampling call when tokens are sampled),
built from requests placed straight into the engine (their pages allocated, the pool's contents
whatever they are: a call's cost does not depend on the values):

- decode batches of 1 .. max_num_seqs at a short, a middle and the longest context;
- prefill rows at every row bucket, full and just above the bucket below, from position 0 or
  after a prefix, as one request or as several requests of one repeated token each (identical
  hidden rows route alike, so fewer experts are touched at the same row count);
- mixed: all decode slots plus prefill rows up to a bucket;
- layer ranges: the power-of-two range steps of layered at three buckets;
- served iterations (grid v2): the shapes the two schedules' iterations have when serving long
  prompts: chunked-512's mixed iterations (4-16 decodes + the rest of the 512-row budget as one
  chunk at prompt positions 0 .. 16K) and layered's (4-16 decodes through every layer + a 1-3-layer
  range of an 8192- or 16384-row prompt), each at the decodes' arXiv-like context.

Under a calibrated routing profile (the engine's `routing` option, e.g. qwen3-paper) every call
touches the experts a served call of its rows touches; each call's sample records its shape
(decode contexts, prefill positions, layers) and the distinct experts and row tiles it measured,
so a cost model with other terms can be refitted to the same timings (lp_jax.sim.refit).

Each point is launched back to back (the device's own pace) `reps` times, adaptively fewer for
long calls; the distinct experts the call measured are its expert work. The host's time per
iteration comes from a short real serving run (each step's wall time minus its wait in fetch),
the read-back from fetching an iteration already finished. Then `lp_jax.sim.fit.fit_table`, and
on a CPU the host/device contention: decode batches timed back to back and as the engine
pipelines them, block by block (`Calibrator.contention`, `lp_jax.sim.contention`).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from lp_jax.bench.ceilings import time_s
from lp_jax.engine.config import bucket_for
from lp_jax.engine.executor import layer_pieces, range_lengths
from lp_jax.engine.memory import device_memory_bytes
from lp_jax.engine.request import SamplingParams, Status
from lp_jax.engine.scheduler.base import IterationPlan, PrefillWork
from lp_jax.sim.cost_model import CostTable, DeviceParams, HostParams, Peaks, device_slug, source_commit, table_file
from lp_jax.sim.contention import fit_contention
from lp_jax.sim.expert_load import expert_load
from lp_jax.sim.fit import fit_table
from lp_jax.sim.work import PREFILL_Q_TILE, WorkModel, kernel_block_m, kernel_prefill_q_tile

TARGET_S = 0.3  # timing budget per grid point (at least BLOCKS x MIN_REPS calls)
BLOCKS, MIN_REPS, MAX_REPS = 3, 2, 20


def ceilings(mib: int, s: int, reps: int = 10) -> Peaks:
    """Copy bandwidth (read + write of `mib` MiB) and matmul rate (s x s x s) in the engine's dtype
    family, best of `reps` calls: the peaks the efficiencies are relative to. Unlike the engine
    bench's (lp_jax.bench.ceilings, bf16, a fresh output each call) the copy is in place: on the CPU
    a fresh 64 MiB output faults in new pages every call (1.8 GB/s instead of ~40)."""
    dtype = jnp.bfloat16 if jax.devices()[0].platform == "gpu" else jnp.float32
    n = mib * 2**20 // jnp.dtype(dtype).itemsize
    add = jax.jit(lambda a: a + 1, donate_argnums=0)
    state = [jnp.ones((n,), dtype)]

    def copy():
        state[0] = add(state[0])
        return state[0]

    copy_Bps = 2 * n * jnp.dtype(dtype).itemsize / time_s(copy, reps)
    a = jnp.ones((s, s), dtype)
    dot = jax.jit(jnp.dot)
    return Peaks(copy_Bps, 2 * s**3 / time_s(lambda: dot(a, a), reps))


class Calibrator:
    """Places requests into a real engine (an lp_jax.LLM with the layered schedule, so that its
    executor has every range step) and times plans on its executor."""

    def __init__(self, llm, seed: int = 0):
        self.llm, self.engine, self.ex = llm, llm.engine, llm.engine.executor
        self.model, self.config = llm.model_config, llm.engine_config
        self.rng = np.random.default_rng(seed)
        self.dtype_bytes = np.dtype(self.engine.dtype).itemsize
        self.backend = "pallas" if _uses_pallas(self.model, self.engine.dtype) else "reference"
        # The routing the engine runs (its tiles expectation only fills in where nothing is measured).
        load = (expert_load(self.model.num_experts, self.model.num_experts_per_tok, self.config.routing)
                if self.model.is_moe else None)
        kind = jax.devices()[0].device_kind
        self.prefill_q_tile = kernel_prefill_q_tile(self.model, kind) if self.backend == "pallas" else PREFILL_Q_TILE
        self.work = WorkModel(self.model, self.dtype_bytes, self.backend,
                              self.config.pages_per_seq(self.model) * self.config.page_size, load,
                              kernel_block_m(self.model, kind), prefill_q_tile=self.prefill_q_tile)

    # --- requests ---------------------------------------------------------------------------
    def _place(self, tokens: list[int], computed: int, status: Status, allocate: int):
        eng = self.engine
        rid = eng.add_request(tokens, SamplingParams(max_tokens=1, ignore_eos=True))
        req = eng.requests[rid]
        eng.state.admit(req)
        eng.blocks.allocate(rid, allocate)
        req.status, req.num_computed = status, computed
        return req

    def decodes(self, B: int, context: int) -> list:
        """B decoding requests about to compute position context - 1 (they see `context` keys)."""
        V = self.model.vocab_size
        return [self._place(self.rng.integers(0, V, context).tolist(), context - 1, Status.DECODING, context)
                for _ in range(B)]

    def prefills(self, sizes: list[int], start: int = 0, repeated: bool = False) -> list[PrefillWork]:
        """Prefill works of positions [start, start + n) for each n in sizes (a request each, of
        one repeated token when `repeated`), not completing their prompts (nothing sampled)
        unless the context limit leaves no room for one more token."""
        V, works, offset = self.model.vocab_size, [], 0
        limit = self.config.model_len(self.model) - 1  # room for max_tokens = 1
        for n in sizes:
            n = min(n, limit - start)
            total = min(start + n + 1, limit)
            tokens = [int(self.rng.integers(0, V))] * total if repeated else self.rng.integers(0, V, total).tolist()
            req = self._place(tokens, start, Status.PREFILLING, start + n)
            req.prefill_target = total
            works.append(PrefillWork(req, start, start + n, offset))
            offset += n
        return works

    def clear(self) -> None:
        eng = self.engine
        for rid in list(eng.requests):
            eng.abort(rid)
        assert eng.blocks.all_free()

    # --- timing -----------------------------------------------------------------------------
    def time_plan(self, plan: IterationPlan) -> tuple[float, list]:
        """(seconds per iteration launched back to back: the median of BLOCKS blocks of reps,
        which a machine shared with other work disturbs less than one mean; the SegmentRecord of
        each call: distinct experts and row tiles per layer)."""
        prep = self.ex.prepare(plan)
        reps = self._reps(prep)
        blocks = [self._back_to_back(prep, reps) for _ in range(BLOCKS)]
        return statistics.median(s for s, _ in blocks), blocks[-1][1].segments

    def _reps(self, prep) -> int:
        """Calls per block within TARGET_S, from one call (also the warm-up)."""
        t = time.perf_counter()
        self.ex.fetch(self.ex.launch(prep))
        return int(np.clip(TARGET_S / BLOCKS / max(time.perf_counter() - t, 1e-6), MIN_REPS, MAX_REPS))

    def _back_to_back(self, prep, reps: int):
        """(seconds per iteration of `reps` launched back to back, the last one's ExecutionResult)."""
        t = time.perf_counter()
        for _ in range(reps):
            flight = self.ex.launch(prep)
        result = self.ex.fetch(flight)
        return (time.perf_counter() - t) / reps, result

    def contention_blocks(self, plan: IterationPlan) -> list[tuple[float, float, float, float]]:
        """Per block of BLOCKS (seconds per iteration): (pipelined, back to back, host, read-back).
        Back to back: the grid's timing (time_plan). Pipelined: as the engine serves, each
        iteration's rows built (prepare) and launched before the one in flight is read back; host:
        the building and launching, read-back: fetch's time after its wait. The two alternate block
        by block, so that a machine whose load drifts disturbs both alike."""
        ex = self.ex
        prep = ex.prepare(plan)
        reps = self._reps(prep)
        out = []
        for _ in range(BLOCKS):
            back_to_back, _ = self._back_to_back(prep, reps)
            host = readback = 0.0
            t = time.perf_counter()
            prev = ex.launch(ex.prepare(plan))
            for _ in range(reps):
                t0 = time.perf_counter()
                flight = ex.launch(ex.prepare(plan))
                t1 = time.perf_counter()
                jax.block_until_ready((prev.tokens_B, [c for _, _, c, _ in prev.segments]))
                t2 = time.perf_counter()
                ex.fetch(prev)
                host, readback, prev = host + t1 - t0, readback + time.perf_counter() - t2, flight
            ex.fetch(prev)
            out.append(((time.perf_counter() - t) / (reps + 1), back_to_back, host / reps, readback / reps))
        return out

    def contention(self) -> dict:
        """The host/device contention (lp_jax.sim.contention) of decode batches of 1, a quarter of
        the slots and all of them at the grid's middle context (a serving run's typical iteration)."""
        S, L = self.config.max_num_seqs, self.model.num_layers
        context = self.grid_contexts()[1]
        blocks = []
        for B in sorted({1, max(1, S // 4), S}):
            try:
                blocks += self.contention_blocks(IterationPlan(L, decodes=self.decodes(B, context)))
            finally:
                self.clear()
        return fit_contention(*zip(*blocks))

    def sample(self, plan: IterationPlan, label: str) -> dict:
        """One "iteration" sample: its calls' work (measured distinct experts) and measured seconds."""
        seconds, records = self.time_plan(plan)
        calls, L = [], self.model.num_layers
        ctx = [r.num_computed + 1 for r in plan.decodes]
        for seg, rec in zip(plan.segments(), records):
            c = ctx if seg.decode else []
            pre = [(w.start, w.end) for w in plan.prefills] if seg.prefill else []
            rows = bucket_for(len(c) + sum(e - s for s, e in pre), self.ex.buckets)
            for lo, n in layer_pieces(seg.layer_lo, seg.layer_hi, L):
                d = tiles = None
                if self.model.is_moe:
                    d = float(np.mean(rec.expert_counts_L[lo:lo + n]))
                    tiles = float(np.mean(rec.expert_tiles_L[lo:lo + n]))
                works = self.work.layer_works(rows, c, pre, distinct=d, tiles=tiles)
                shape = dict(rows=rows, decode_contexts=list(c), prefills=[list(p) for p in pre], distinct=d,
                             tiles=tiles)
                calls.append(dict(kind="step", layers=self.work.layer_counts(lo, n), shape=shape,
                                  work={t: w._asdict() for t, w in works.items()}, range=n != L, seconds=0.0))
        sampled = len(plan.decodes) + (sum(w.completes_prompt for w in plan.prefills) if plan.prefill_finishes_layers
                                       else 0)
        head = (dict(kind="head", rows=bucket_for(sampled, self.ex.seq_buckets), head_bytes=self.work.head_bytes,
                     head_flops_per_row=self.work.head_flops_per_row, seconds=0.0) if sampled else None)
        return dict(kind="iteration", case=label, calls=calls, head=head, seconds=seconds, launch_bound=True)

    # --- the grid ---------------------------------------------------------------------------
    @property
    def prefill_room(self) -> int:
        """Most prefill rows one call can hold: the hidden buffer's prefill region."""
        return self.config.hidden_rows() - self.config.max_num_seqs - 1

    def grid_contexts(self) -> list[int]:
        """The decode contexts of the grid: short, middle, longest (that fits the pool at the
        largest batch)."""
        limit = self.config.model_len(self.model) - 2
        most = (self.engine.blocks.usable_pages // self.config.max_num_seqs) * self.config.page_size - 1
        return sorted({16, min(limit, most) // 2, min(limit, most)})

    def grid(self, quick: bool = False) -> list[tuple[str, Callable[[], IterationPlan]]]:
        """(label, make plan) of every grid point (see the module docstring)."""
        L, S = self.model.num_layers, self.config.max_num_seqs
        limit = self.config.model_len(self.model) - 2
        buckets = [b for b in self.ex.buckets if b >= 4]
        contexts = self.grid_contexts()
        points = []
        for B in sorted({1, max(1, S // 4), S} if quick else {1, 2, max(1, S // 4), max(1, S // 2), S}):
            for c in contexts:
                points.append((f"decode B={B} ctx={c}", lambda B=B, c=c: IterationPlan(L, decodes=self.decodes(B, c))))
        below = [0] + buckets[:-1]
        room = self.prefill_room
        for b, prev in zip(buckets, below):
            if prev >= room:
                continue
            b = min(b, room)
            for n in sorted({b, prev + 1}):
                start = min(limit - n, limit // 2)
                points.append((f"prefill {n} rows", lambda n=n: self._prefill_plan([n], 0, False, (0, L))))
                if not quick and start > 0:
                    points.append((f"prefill {n} rows after {start}",
                                   lambda n=n, s=start: self._prefill_plan([n], s, False, (0, L))))
            if not quick and b >= 8:
                for m in (1, 4):
                    points.append((f"prefill {b} rows as {m} repeated-token requests",
                                   lambda b=b, m=m: self._prefill_plan([b // m] * m, 0, True, (0, L))))
            if b > S:
                points.append((f"mixed {S} decodes + {b - S} prefill rows",
                               lambda b=b: IterationPlan(L, decodes=self.decodes(S, contexts[1]),
                                                         prefills=self.prefills([b - S], 0), prefill_layers=(0, L))))
        ranged = sorted({min(b, room) for b in (buckets[0], buckets[len(buckets) // 2], buckets[-1])})
        for n in range_lengths(L):
            for b in (ranged[:2] if quick else ranged):
                lo = (L - n) // 2
                points.append((f"range [{lo}, {lo + n}) {b} rows",
                               lambda b=b, lo=lo, n=n: self._prefill_plan([b], 0, False, (lo, lo + n))))
        return points + self.served_points(quick)

    def served_points(self, quick: bool = False) -> list[tuple[str, Callable[[], IterationPlan]]]:
        """(label, make plan) of the iterations the schedules serve long prompts with (grid v2):
        chunked's mixed iterations (B decodes + a chunk filling the token budget, at prompt
        positions 0 .. 16K) and layered's (B decodes through every layer + an n-layer range of one
        whole prompt), B in 4 .. 16, the decodes at an arXiv-like context (~9K keys) where the
        pool holds them. Sizes are clipped to what the engine holds (a tiny model's)."""
        L, S, page = self.model.num_layers, self.config.max_num_seqs, self.config.page_size
        limit, room = self.config.model_len(self.model) - 2, self.prefill_room
        batches = sorted({min(b, S) for b in ((4,) if quick else (4, 16))})
        # A prompt that fits the context completes nowhere (nothing sampled beyond the decodes).
        prompts = sorted({min(p, room, limit - 1) for p in ((8192,) if quick else (8192, 16384))})

        def context(B: int, prefill_rows: int) -> int:
            """Keys each of B decodes sees: ~9K, or what the pool leaves beside the prefill."""
            pages = self.engine.blocks.usable_pages - -(-prefill_rows // page) - 1
            return max(16, min(9216, limit, pages // B * page - 1))

        points = []
        budget = min(self.config.token_budget, room)
        for B in batches:
            chunk = budget - B
            for start in sorted({min(s, limit - chunk) for s in ((0, 8192) if quick else (0, 4096, 8192, 16384 - chunk))}):
                if start < 0:
                    continue
                c = context(B, start + chunk)
                points.append((f"served chunked: {B} decodes at {c} + {chunk} prefill rows after {start}",
                               lambda B=B, c=c, chunk=chunk, start=start: IterationPlan(
                                   L, decodes=self.decodes(B, c), prefills=self.prefills([chunk], start),
                                   prefill_layers=(0, L))))
        for B in batches:
            for P in prompts:
                c = context(B, P)
                for n in ((1, 3) if quick else (1, 2, 3)):
                    n = min(n, L)
                    # 1-2 layers in the middle; 3 layers at the end (the prompt's token is sampled).
                    lo = L - n if n == 3 else max(0, (L - n) // 2)
                    points.append((f"served layered: {B} decodes at {c} + range [{lo}, {lo + n}) of {P} rows",
                                   lambda B=B, c=c, P=P, lo=lo, n=n: IterationPlan(
                                       L, decodes=self.decodes(B, c), prefills=self.prefills([P], 0),
                                       prefill_layers=(lo, lo + n))))
        return points

    def _prefill_plan(self, sizes, start, repeated, layers) -> IterationPlan:
        return IterationPlan(self.model.num_layers, prefills=self.prefills(sizes, start, repeated), prefill_layers=layers)

    def run_grid(self, quick: bool = False, progress: bool = True) -> list[dict]:
        samples = []
        points = self.grid(quick)
        for label, make in tqdm(points, desc="calibrating", unit="point", disable=not progress, leave=False):
            try:
                samples.append(self.sample(make(), label))
            finally:
                self.clear()
        return samples

    # --- the host ---------------------------------------------------------------------------
    def host_samples(self, num_requests: int = 24) -> tuple[list[dict], float, dict]:
        """(host samples of a short serving run, read-back seconds, the run: its requests'
        (prompt tokens, max_tokens) and seconds from first dispatch to last token). Each step's
        host time is its wall time minus its time in fetch (waiting for the device, then the
        read-back)."""
        eng, ex, L = self.engine, self.ex, self.model.num_layers
        waits: list[float] = []
        fetch = ex.fetch

        def timed_fetch(flight):
            t = time.perf_counter()
            out = fetch(flight)
            waits.append(time.perf_counter() - t)
            return out

        V = self.model.vocab_size
        top = min(self.config.model_len(self.model) // 2, self.prefill_room)
        requests = [(int(n), int(self.rng.integers(4, 17))) for n in self.rng.integers(1, max(2, top), num_requests)]
        for n, m in requests:
            eng.add_request(self.rng.integers(0, V, n).tolist(), SamplingParams(max_tokens=m, ignore_eos=True))
        samples = []
        ex.fetch = timed_fetch
        run_start = time.perf_counter()
        try:
            while eng.has_unfinished():
                waits.clear()
                before = eng.state.iteration
                t = time.perf_counter()
                eng.step()
                wall = time.perf_counter() - t
                if eng.state.iteration == before:  # nothing dispatched: only a read-back
                    continue
                plan, flight = eng._in_flight[:2]
                calls = sum(len(layer_pieces(seg.layer_lo, seg.layer_hi, L)) for seg in plan.segments())
                samples.append(dict(kind="host", decodes=len(plan.decodes), prefills=len(plan.prefills),
                                    calls=calls + bool(flight.sampled), seconds=max(wall - sum(waits), 1e-7)))
        finally:
            ex.fetch = fetch
        run = dict(requests=requests, seconds=time.perf_counter() - run_start)
        readbacks = []
        for _ in range(5):  # an iteration already finished: fetch is the read-back alone
            flight = ex.dispatch(IterationPlan(L, decodes=self.decodes(1, 16)))
            jax.block_until_ready(flight.tokens_B)
            t = time.perf_counter()
            ex.fetch(flight)
            readbacks.append(time.perf_counter() - t)
            self.clear()
        return samples, statistics.median(readbacks), run


def _uses_pallas(model, dtype) -> bool:
    from pallas_kernels.dispatch import pallas_attention_supports, resolve_backend

    return resolve_backend(None) == "pallas" and pallas_attention_supports(
        model.num_heads, model.num_kv_heads, model.head_dim, 16, dtype)


def calibrate(model: str, engine_options: dict, *, quick: bool = False, progress: bool = True, log=print,
              host_requests: int = 24) -> CostTable:
    """Calibrate `model` on this machine's first JAX device with these engine options (the layered
    schedule's executor: whole-model and range steps at its row buckets)."""
    import lp_jax

    t0 = time.perf_counter()
    llm = lp_jax.LLM(model, "layered", **engine_options)
    log(f"calibrating {model} on {jax.devices()[0].device_kind}; engine ready in {time.perf_counter() - t0:.0f} s")
    table = calibrate_with(Calibrator(llm), quick=quick, progress=progress, host_requests=host_requests)
    log(f"fitted in {time.perf_counter() - t0:.0f} s in all ({table.backend} kernels, {table.dtype}): " + "; ".join(
        f"{k} median |error| {100 * v['median_abs_rel_err']:.1f} %, p90 {100 * v['p90_abs_rel_err']:.1f} %"
        for k, v in table.fit.items() if isinstance(v, dict) and "median_abs_rel_err" in v)
        + f"; host/device contention {table.host.contention:.2f}")
    return table


def calibrate_with(cal: Calibrator, *, quick: bool = False, progress: bool = True, host_requests: int = 24) -> CostTable:
    """The cost table of a calibrator's engine: peaks, the grid, the host run, the fit."""
    platform = jax.devices()[0].platform
    peaks = ceilings(256 if platform == "gpu" else 64, 8192 if platform == "gpu" else 1024)
    t1 = time.perf_counter()
    samples = cal.run_grid(quick, progress)
    host, readback, run = cal.host_samples(host_requests)
    kind = jax.devices()[0].device_kind
    llm, cfg = cal.llm, cal.config
    base = CostTable(
        model=llm.model_config.name, device=device_slug(kind, jax.devices()[0].platform), device_kind=kind, provenance="measured",
        backend=cal.backend, dtype=str(llm.engine.dtype), memory_bytes=device_memory_bytes(), peaks=peaks,
        device_params=DeviceParams(), host=HostParams(),
        source=f"lp-jax calibrate on {kind} ({os.cpu_count()} host CPUs, load average {os.getloadavg()[0]:.1f}): "
               f"{len(samples)} grid points in {time.perf_counter() - t1:.0f} s, {len(host)} host steps of a "
               f"{host_requests}-request run",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), commit=source_commit(),
        kernel_tiles_device=kind if cal.backend == "pallas" else None, prefill_q_tile=cal.prefill_q_tile,
        fit=dict(grid=dict(row_buckets=list(cal.ex.buckets), max_num_seqs=cfg.max_num_seqs,
                           max_model_len=cfg.model_len(llm.model_config), page_size=cfg.page_size,
                           points=[s["case"] for s in samples], quick=quick)))
    table = fit_table(base, samples + host, readback_s=readback)
    # A CPU "device" shares its cores with the engine's Python: how much of the host's time it
    # loses is measured (Calibrator.contention). A GPU loses none.
    contention = cal.contention() if platform == "cpu" else dict(contention=0.0)
    table = table.with_params(host=dataclasses.replace(table.host, contention=contention["contention"]))
    # The whole engine, checked on the host run (not fitted to it).
    return table.with_params(fit=dict(table.fit, contention=contention, host_run=dict(
        requests=len(run["requests"]), real_s=run["seconds"], simulated_s=_run_in_sim(table, cal.config, run))))


def _run_in_sim(table: CostTable, config, run: dict) -> float:
    """Seconds the simulator takes for the host run's requests, all added at once."""
    import lp_jax

    options = {k: v for k, v in dataclasses.asdict(config).items() if k != "schedule"}
    llm = lp_jax.LLM(table.model, config.schedule, executor=table, **options)
    zeros = np.zeros(max(n for n, _ in run["requests"]), np.int32)
    for n, m in run["requests"]:
        llm.add_request(zeros[:n], max_tokens=m, ignore_eos=True)
    start = llm.engine.clock()
    while llm.has_unfinished():
        llm.step()
    return llm.engine.clock() - start


def default_table_path(table: CostTable) -> str:
    return table_file(table.device, table.model)
