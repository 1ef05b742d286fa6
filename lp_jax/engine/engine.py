"""The serving loop: admit -> schedule -> execute plan -> sample -> stream -> record.

The engine is generic over its executor and clock: `ModelExecutor` with the wall clock serves
for real; a cost-model executor with a virtual clock (the simulator, lp_jax.sim) drives the same
schedulers and bookkeeping. The engine is given a factory that makes its executor once the KV
block manager exists (`model_executor(params)` for the real one), so it never imports the
simulator. An executor has precompile(progress), dispatch(plan) -> a handle with `.sampled`
(the requests a token is sampled for: the plan's decodes, then the prefills completing their
prompt) and fetch(handle) -> ExecutionResult.

Pipelined (as vLLM's async scheduling): `step` schedules and dispatches iteration i+1, then
reads iteration i's sampled tokens back, so the host's scheduling, row building and bookkeeping
overlap the device's work. Everything a plan implies except the tokens' values is applied when
it is dispatched (positions, prefill progress, a request finishing at max_tokens). A token's time
is when the host has it. A stop token is seen one iteration late: the request has already been
scheduled once more, and that extra token is discarded.

Single-threaded: one caller drives an Engine (add_request, step, abort from the same thread);
nothing is locked. A server runs the loop on a thread of its own and hands requests to it.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from lp_jax.engine import compile_counter
from lp_jax.engine.config import EngineConfig, check_shares_executor
from lp_jax.engine.executor import ExecutionResult, InFlight, ModelExecutor
from lp_jax.engine.kv_cache import BlockManager
from lp_jax.engine.memory import plan_num_pages
from lp_jax.engine.request import Request, RequestOutput, SamplingParams, Status
from lp_jax.engine.scheduler import IterationPlan, SchedulerState, make_scheduler
from lp_jax.model.config import ModelConfig, ceil_div, expert_bytes


@dataclass
class IterationRecord:
    """What one iteration did (kept when the engine is built with trace=True)."""

    iteration: int
    start_s: float
    end_s: float
    decode_ids: list[int]
    prefill: list[tuple[int, int, int]]  # (request id, start, end)
    prefill_layers: tuple[int, int]  # the prefills' layer range (pipelined cohorts: their span)
    preempted_ids: list[int]
    expert_bytes: float  # distinct experts x bytes per expert, summed over its calls and layers
    expert_streamed_bytes: float  # row tiles x bytes per expert (what the grouped matmuls stream)
    segments: list  # executor SegmentRecords
    prefill_ranges: list[tuple[int, int]] = field(default_factory=list)  # layer range of each prefill entry
    decode_contexts: list[int] = field(default_factory=list)  # keys each decode row sees (position + 1)
    prefill_completes: list[bool] = field(default_factory=list)  # per prefill entry: its prompt's last rows


# (model, engine config, block manager, dtype, record rows) -> an executor.
ExecutorFactory = Callable[[ModelConfig, EngineConfig, BlockManager, np.dtype, bool], object]


def model_executor(params: dict, backend: str | None = None, free_params: bool = False) -> ExecutorFactory:
    """The factory of the real executor over these weights (`backend`: kernel choice; free_params:
    the weights are the engine's to free as they are split, see ModelExecutor)."""
    def make(model, config, blocks, dtype, record_rows):
        return ModelExecutor(model, config, params, blocks, dtype, backend, record_rows=record_rows,
                             free_params=free_params)
    return make


def check_predictor(config: EngineConfig, predict_s) -> None:
    """ValueError for the adaptive layered schedule without a cost model to size groups by."""
    if config.group_rule == "adaptive" and predict_s is None:
        raise ValueError("group_rule='adaptive' needs a cost model to predict iteration times: run on the simulator "
                         "(executor='sim[:DEVICE]') or give the engine predict_s (lp_jax.LLM builds it from the "
                         "model's committed cost table, lp_jax/sim/tables/)")


class Engine:
    def __init__(self, model: ModelConfig, config: EngineConfig, executor: ExecutorFactory, dtype,
                 clock: Callable[[], float] = time.perf_counter, trace: bool = False, progress=None,
                 num_pages: int | None = None, predict_s: Callable[[IterationPlan], float] | None = None):
        config.check_model(model)
        config = config.for_model(model)
        self.model, self.config, self.clock, self.trace = model, config, clock, trace
        self.dtype = np.dtype(dtype)
        num_pages = num_pages or plan_num_pages(model, config, dtype)
        self.blocks = BlockManager(num_pages, config.page_size)
        self.executor = executor(model, config, self.blocks, self.dtype, trace)
        # The cost model the adaptive layered schedule sizes groups by: the one given, else the
        # executor's own (the simulator's).
        self.predict_s = predict_s or getattr(self.executor, "predict_s", None)
        check_predictor(config, self.predict_s)
        self.state = SchedulerState(config, model.num_layers, self.blocks, self.predict_s)
        self.scheduler = make_scheduler(config.schedule)
        self.executor.precompile(progress)
        self.compiles_after_startup = compile_counter.count()
        self.expert_bytes_each = expert_bytes(model, self.dtype.itemsize) if model.is_moe else 0
        self.requests: dict[int, Request] = {}
        self.records: list[IterationRecord] = []
        self.total_expert_bytes = 0.0
        self.total_expert_streamed_bytes = 0.0
        self._next_id = 0
        # plan, handle, start, iteration, decode contexts (kept when tracing)
        self._in_flight: tuple[IterationPlan, object, float, int, list[int]] | None = None

    # --- requests ---------------------------------------------------------------------------
    def validate(self, prompt: Sequence[int], params: SamplingParams) -> list[int] | np.ndarray:
        """The prompt as a list of ints (a 1-D integer numpy array is checked at once and kept,
        read-only), or ValueError naming what is wrong with the request."""
        if isinstance(prompt, (str, bytes)) or not hasattr(prompt, "__len__"):
            raise ValueError(f"a prompt must be a list of token ids, got {type(prompt).__name__}")
        if len(prompt) == 0:
            raise ValueError("empty prompt: a request needs at least one token")
        V = self.model.vocab_size
        if isinstance(prompt, np.ndarray):
            tokens = self._validate_array(prompt)
        else:
            tokens = []
            for i, t in enumerate(prompt):
                if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < V:
                    raise ValueError(f"prompt token {i} is {t!r}, outside the vocabulary [0, {V})")
                tokens.append(int(t))
        params.validate(V)
        limit = self.config.model_len(self.model)
        if len(tokens) + params.max_tokens > limit:
            raise ValueError(f"prompt ({len(tokens)} tokens) + max_tokens ({params.max_tokens}) = "
                             f"{len(tokens) + params.max_tokens} exceeds the context limit of {limit} tokens")
        need = ceil_div(len(tokens) + params.max_tokens, self.config.page_size)
        if need > self.blocks.usable_pages:
            raise ValueError(f"request can never fit the KV pool: {len(tokens) + params.max_tokens} tokens need "
                             f"{need} pages of {self.config.page_size}, the pool has {self.blocks.usable_pages}")
        return tokens

    def _validate_array(self, prompt: np.ndarray) -> np.ndarray:
        V = self.model.vocab_size
        if prompt.ndim != 1 or not np.issubdtype(prompt.dtype, np.integer) or prompt.dtype == np.bool_:
            raise ValueError(f"a prompt array must be 1-D of integers, got shape {prompt.shape} dtype {prompt.dtype}")
        bad = np.flatnonzero((prompt < 0) | (prompt >= V))
        if bad.size:
            raise ValueError(f"prompt token {bad[0]} is {prompt[bad[0]]!r}, outside the vocabulary [0, {V})")
        view = prompt.view()
        view.flags.writeable = False
        return view

    def add_request(self, prompt: Sequence[int], params: SamplingParams | None = None,
                    arrival_s: float | None = None) -> int:
        params = params or SamplingParams()
        tokens = self.validate(prompt, params)
        rid = self._next_id
        self._next_id += 1
        seed = params.seed if params.seed is not None else zlib.crc32(f"{self.config.seed}:{rid}".encode()) & 0x7FFFFFFF
        req = Request(rid, tokens, params, self.clock() if arrival_s is None else arrival_s, seed,
                      routing_seed=zlib.crc32(f"routing:{self.config.seed}:{rid}".encode()) & 0x7FFFFFFF)
        self.requests[rid] = req
        self.state.waiting.append(req)
        return rid

    def abort(self, request_id: int) -> bool:
        """Cancel a request in any state; False if it had already ended. ValueError if the id was
        never issued. Ended requests are forgotten (the engine keeps no per-request state after a
        request ends, so a long-running server does not grow)."""
        req = self.requests.pop(request_id, None)
        if req is None:
            if isinstance(request_id, int) and 0 <= request_id < self._next_id:
                return False
            raise ValueError(f"unknown request id {request_id!r}")
        self.state.remove(req)
        req.status = Status.CANCELLED
        req.finish_reason = "abort"
        req.finished_s = self.clock()
        return True

    def reconfigure(self, config: EngineConfig) -> None:
        """Serve from now on with another schedule (and its options) on the same executor: the same
        weights, KV pool and compiled executables. Only between runs (nothing in flight), and only to
        options the executor can serve (`check_shares_executor`; build it with
        `shared_executor_config`). ValueError otherwise."""
        if self.has_unfinished():
            raise ValueError("cannot change the schedule while requests are in flight")
        check_shares_executor(self.executor.config, config)
        config.check_model(self.model)
        check_predictor(config, self.predict_s)
        self.config = config
        self.state = SchedulerState(config, self.model.num_layers, self.blocks, self.predict_s)
        self.scheduler = make_scheduler(config.schedule)

    def has_unfinished(self) -> bool:
        return bool(self.state.waiting or self.state.running or self._in_flight)

    def compiles_since_startup(self) -> int:
        return compile_counter.count() - self.compiles_after_startup

    # --- one iteration ----------------------------------------------------------------------
    def _plan(self, finished: list[Request]) -> IterationPlan:
        plan = self.scheduler.schedule(self.state)
        if plan.empty and self._in_flight:
            # What blocks it (pages of requests that stopped, a preempted request's token) may be
            # released by the iteration in flight: read it back, then try again.
            finished += self._resolve()
            plan = self.scheduler.schedule(self.state)
        while plan.empty and self.state.running:
            # Prefills stuck waiting for pages only their peers hold: free the newest, retry.
            victim = self.state.running[-1]
            self.state.preempt(victim)
            plan = self.scheduler.schedule(self.state)
            plan.preempted.append(victim)
        if plan.empty and self.state.waiting:
            raise RuntimeError(f"no request can be scheduled: {len(self.state.waiting)} waiting, "
                               f"{self.blocks.num_free()} free pages")
        return plan

    def step(self) -> list[RequestOutput]:
        """Dispatch one iteration and read back the previous one; returns the requests whose
        last token came back in this call."""
        if not self.has_unfinished():
            return []
        start = self.clock()
        finished: list[Request] = []
        plan = self._plan(finished)
        dispatched = None
        if not plan.empty:
            for r in plan.decodes + [w.request for w in plan.prefills]:
                if r.scheduled_s is None:
                    r.scheduled_s = start
            contexts = [r.num_computed + 1 for r in plan.decodes] if self.trace else []
            dispatched = (plan, self.executor.dispatch(plan), start, self.state.iteration, contexts)
            self._advance(plan)
            self.state.iteration += 1
        if self._in_flight:
            finished += self._resolve()
        self._in_flight = dispatched
        outputs = [RequestOutput.of(r) for r in finished]
        for r in finished:
            self.requests.pop(r.request_id, None)
        return outputs

    def _advance(self, plan: IterationPlan) -> None:
        """Apply what a dispatched plan implies, before its tokens are known."""
        for req in plan.decodes:
            req.num_computed += 1
            self._token_in_flight(req)
        for w in plan.finishing():
            req = w.request
            req.num_computed = w.end
            if w.completes_prompt:
                req.status = Status.DECODING
                self._token_in_flight(req)

    def _token_in_flight(self, req: Request) -> None:
        req.num_pending += 1
        if len(req.output) + req.num_pending >= req.params.max_tokens:
            # Its last token is in flight: it needs no more iterations, pages or slot.
            self.state.remove(req)

    def _resolve(self) -> list[Request]:
        """Read back the iteration in flight: emit its tokens, account its expert bytes."""
        plan, flight, start, iteration, contexts = self._in_flight
        self._in_flight = None
        result = self.executor.fetch(flight)
        now = self.clock()
        finished = [r for r, t in zip(plan.decodes, result.decode_tokens) if self._emit(r, t, now)]
        finished += [r for r in flight.sampled[len(plan.decodes):]
                     if self._emit(r, result.prefill_tokens[r.request_id], now)]
        spent, streamed = self._account_expert_bytes(result)
        if self.trace:
            self.records.append(IterationRecord(
                iteration, start, now, [r.request_id for r in plan.decodes],
                [(w.request.request_id, w.start, w.end) for w in plan.prefills], plan.prefill_layers,
                [r.request_id for r in plan.preempted], spent, streamed, result.segments,
                [plan.layers_of(w) for w in plan.prefills], contexts, [w.completes_prompt for w in plan.prefills]))
        return finished

    def _emit(self, req: Request, token: int, now: float) -> bool:
        """Append a token that came back; finish the request if it is done. True if it finished.
        A token of a request that ended while it was in flight (stopped one iteration earlier,
        or aborted) is discarded."""
        req.num_pending -= 1
        if req.status.done:
            return False
        req.output.append(token)
        req.token_times_s.append(now)
        p = req.params
        stops = p.stop_token_ids + (() if p.ignore_eos else self.model.eos_token_ids)
        if token in stops:
            req.finish_reason = "stop"
        elif len(req.output) >= p.max_tokens:
            req.finish_reason = "length"
        else:
            return False
        req.status = Status.FINISHED
        req.finished_s = now
        self.state.remove(req)
        return True

    def _account_expert_bytes(self, result: ExecutionResult) -> tuple[float, float]:
        """Expert-weight bytes of this iteration, two ways: distinct experts per layer x bytes per
        expert (the paper's metric: each loaded expert read once), and row tiles per layer x bytes
        per expert (what the grouped matmuls stream: an expert's weights once per tile of its
        rows). Each call's bytes are shared among its requests in proportion to their rows
        (requests aborted meanwhile are skipped). Returns (distinct bytes, streamed bytes)."""
        spent = streamed = 0.0
        for seg in result.segments:
            seg_bytes = float(seg.expert_counts_L.sum()) * self.expert_bytes_each
            seg_streamed = float(seg.expert_tiles_L.sum()) * self.expert_bytes_each
            spent += seg_bytes
            streamed += seg_streamed
            total_rows = sum(seg.rows_per_request.values())
            for rid, n in seg.rows_per_request.items():
                if rid in self.requests:
                    self.requests[rid].expert_bytes += seg_bytes * n / total_rows
                    self.requests[rid].expert_streamed_bytes += seg_streamed * n / total_rows
        self.total_expert_bytes += spent
        self.total_expert_streamed_bytes += streamed
        return spent, streamed
