"""Chunked prefill (Sarathi-Serve's stall-free batching): every running decode first, then
prefill chunks of unfinished and waiting prompts until the iteration's token budget (decodes
included) is spent. Each chunk runs through all layers together with the decodes."""

from __future__ import annotations

from lp_jax.engine.scheduler.base import IterationPlan, SchedulerState, reserve_decode_slots, take_prefill_chunks


class ChunkedScheduler:
    name = "chunked"

    def schedule(self, state: SchedulerState) -> IterationPlan:
        L = state.num_layers
        decodes, preempted = reserve_decode_slots(state)
        works = take_prefill_chunks(state, state.config.token_budget - len(decodes))
        return IterationPlan(L, decodes=decodes, prefills=works, prefill_layers=(0, L) if works else (0, 0),
                             preempted=preempted)
