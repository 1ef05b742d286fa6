"""Prefill-first (vLLM v0 / Orca style): waiting prompts are prefilled whole, through all layers,
before decodes continue. Decodes stall during those iterations: the baseline that shows why
stall-free schedules exist."""

from __future__ import annotations

from lp_jax.engine.scheduler.base import IterationPlan, SchedulerState, reserve_decode_slots, take_prefill_chunks


class PrefillFirstScheduler:
    name = "prefill_first"

    def schedule(self, state: SchedulerState) -> IterationPlan:
        L = state.num_layers
        works = take_prefill_chunks(state, state.config.max_prefill_tokens, whole_prompts=True)
        if works:
            return IterationPlan(L, prefills=works, prefill_layers=(0, L))
        decodes, preempted = reserve_decode_slots(state)
        return IterationPlan(L, decodes=decodes, preempted=preempted)
