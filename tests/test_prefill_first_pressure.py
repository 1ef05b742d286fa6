"""prefill_first under KV pressure: the running decodes' next slots are reserved before prompts
are admitted, and prompts leave one free page per running decode (a watermark). Against the old
order (admit first, then reserve) it preempts less and recomputes less, with the same outputs."""

from __future__ import annotations

import numpy as np

import lp_jax
from lp_jax.engine.config import EngineConfig
from lp_jax.engine.kv_cache import BlockManager
from lp_jax.engine.request import Request, SamplingParams, Status
from lp_jax.engine.scheduler import IterationPlan, SchedulerState, make_scheduler
from lp_jax.engine.scheduler.base import reserve_decode_slots, take_prefill_chunks
from tests.engine_helpers import preset_model, run_with_arrivals


class AdmitFirstScheduler:
    """The order prefill_first had before: prompts admitted into any free page, decodes' slots
    reserved only in iterations without prefill."""

    name = "prefill_first"

    def schedule(self, state: SchedulerState) -> IterationPlan:
        L = state.num_layers
        works = take_prefill_chunks(state, state.config.max_prefill_tokens, whole_prompts=True)
        if works:
            return IterationPlan(L, prefills=works, prefill_layers=(0, L))
        decodes, preempted = reserve_decode_slots(state)
        return IterationPlan(L, decodes=decodes, preempted=preempted)


def serve_on_host(scheduler, num_pages: int, prompt_lens, output_lens, arrival_iters) -> tuple[int, int]:
    """Run requests through a scheduler alone (tokens are not computed: every decode and every
    completed prompt emits one placeholder token). Returns (preemptions, prefill tokens run)."""
    config = EngineConfig(schedule="prefill_first", max_num_seqs=8, max_prefill_tokens=128)
    state = SchedulerState(config, 4, BlockManager(num_pages, config.page_size))
    reqs = [Request(i, [1] * n, SamplingParams(max_tokens=m), 0.0, i)
            for i, (n, m) in enumerate(zip(prompt_lens, output_lens))]

    def emit(req):
        req.output.append(0)
        if len(req.output) >= req.params.max_tokens:
            req.status = Status.FINISHED
            state.remove(req)

    arrived, prefill_tokens = 0, 0
    while any(not r.status.done for r in reqs):
        assert state.iteration < 20_000, "stuck"
        while arrived < len(reqs) and arrival_iters[arrived] <= state.iteration:
            state.waiting.append(reqs[arrived])
            arrived += 1
        plan = scheduler.schedule(state)
        while plan.empty and state.running:  # as Engine._plan does
            state.preempt(state.running[-1])
            plan = scheduler.schedule(state)
        prefill_tokens += plan.prefill_tokens
        for req in plan.decodes:
            req.num_computed += 1
            emit(req)
        for w in plan.prefills:
            w.request.num_computed = w.end
            if w.completes_prompt:
                w.request.status = Status.DECODING
                emit(w.request)
        state.iteration += 1
    return sum(r.num_preemptions for r in reqs), prefill_tokens


def test_reserving_decodes_first_with_a_watermark_preempts_and_recomputes_less():
    rng = np.random.default_rng(1)
    totals = {"admit first": np.zeros(2), "reserve first": np.zeros(2)}
    for _ in range(10):
        n = 16
        lens, outs = rng.integers(20, 100, n).tolist(), rng.integers(16, 64, n).tolist()
        arrivals = sorted(rng.integers(0, 60, n).tolist())
        for pages in (16, 24):
            totals["admit first"] += serve_on_host(AdmitFirstScheduler(), pages, lens, outs, arrivals)
            totals["reserve first"] += serve_on_host(make_scheduler("prefill_first"), pages, lens, outs, arrivals)
    (old_preempt, old_prefill), (new_preempt, new_prefill) = totals["admit first"], totals["reserve first"]
    # Measured on these draws: 149 -> 68 preemptions, 29,608 -> 24,563 prefill tokens (recomputes included).
    assert new_preempt < 0.6 * old_preempt, totals
    assert new_prefill < 0.9 * old_prefill, totals


def test_a_prompt_needing_the_whole_pool_still_runs_when_nothing_decodes():
    """No decodes, no watermark: the watermark never blocks the only request."""
    pool = 9  # 8 usable pages of 16 tokens
    assert serve_on_host(make_scheduler("prefill_first"), pool, [120], [8], [0]) == (0, 120)


def test_engine_under_kv_pressure_gives_the_same_outputs_with_fewer_preemptions():
    """Eight requests (20-90-token prompts, 32 output tokens) arriving over 20 iterations into 15
    usable pages, three draws. Measured: 4 + 5 + 2 preemptions admitting first, 2 + 2 + 1 now."""
    cfg, params = preset_model("tiny-qwen3-moe", seed=5)
    engine = dict(max_model_len=256, max_num_seqs=8, max_prefill_tokens=128, max_cohort_tokens=128,
                  token_budget=64, row_buckets=(16, 64, 136))

    def run(prompts, arrivals, num_pages=None, scheduler=None):
        llm = lp_jax.LLM(cfg, "prefill_first", params=params, num_pages=num_pages, **engine)
        if scheduler is not None:
            llm.engine.scheduler = scheduler
        outs = run_with_arrivals(llm, prompts, arrivals, max_tokens=32)
        assert llm.engine.blocks.all_free()
        return [o.token_ids for o in outs], sum(o.num_preemptions for o in outs)

    old_total = new_total = 0
    for seed in (0, 2, 3):
        rng = np.random.default_rng(seed)
        prompts = [[int(t) for t in rng.integers(0, 512, k)] for k in rng.integers(20, 90, 8)]
        arrivals = sorted(rng.integers(0, 20, 8).tolist())
        roomy, none = run(prompts, arrivals)
        old, old_preemptions = run(prompts, arrivals, 16, AdmitFirstScheduler())
        new, new_preemptions = run(prompts, arrivals, 16)
        assert none == 0 and old == new == roomy
        old_total, new_total = old_total + old_preemptions, new_total + new_preemptions
    assert new_total < old_total, (new_total, old_total)
