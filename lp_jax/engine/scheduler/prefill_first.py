"""Prefill-first (vLLM v0 / Orca style): waiting prompts are prefilled whole, through all layers,
before decodes continue. Decodes stall during those iterations: the baseline that shows why
stall-free schedules exist.

Under KV pressure, admitting prompts into the pages the running decodes are about to need
thrashes: the next decode iteration preempts a decode (often the prompt just prefilled), whose
recompute takes the pages back, and so on. So the running decodes' next slots are reserved
before any prompt is admitted (as vLLM's scheduler serves running requests before waiting ones),
and a prompt is admitted only while one free page per running decode stays free (a watermark, as
vLLM v0 keeps one): within the next page_size iterations no decode needs more than one new page.
With no decodes running there is no watermark, so a prompt that needs the whole pool still runs.
"""

from __future__ import annotations

from lp_jax.engine.scheduler.base import IterationPlan, SchedulerState, reserve_decode_slots, take_prefill_chunks


class PrefillFirstScheduler:
    name = "prefill_first"

    def schedule(self, state: SchedulerState) -> IterationPlan:
        L = state.num_layers
        decodes, preempted = reserve_decode_slots(state)
        works = take_prefill_chunks(state, state.config.max_prefill_tokens, whole_prompts=True,
                                    keep_free=len(decodes))
        if works:
            # The decodes keep the slots reserved above and run in the next iteration.
            return IterationPlan(L, prefills=works, prefill_layers=(0, L), preempted=preempted)
        return IterationPlan(L, decodes=decodes, preempted=preempted)
