"""Layered prefill (arXiv 2510.08055): the decoder stack is split into G contiguous layer groups;
each iteration one group runs the prefill of a cohort of prompts together with the decodes,
while every other layer runs decodes only. Prefill advances one group per iteration and the
first token is sampled after the last group, so decodes never stall and every layer sees each
prompt token once (each expert's weights are read once per cohort, not once per chunk).

A cohort (FCFS whole waiting prompts, up to max_cohort_tokens tokens and max_num_seqs
running) is admitted only when no cohort is in flight. G follows the cohort's token count (see
EngineConfig.num_groups_for). A prompt longer than the cap is a cohort of its own, of up to
max_lone_prompt_tokens tokens (L x group_tokens by default: G = ceil(tokens / group_tokens) <= L
groups, so each iteration's group computes about what a group_tokens chunk through every layer
would, and every layer sees the whole prompt once); a prompt longer still is prefilled in chunks
of that size, each of which traverses all groups (layered + chunked).
"""

from __future__ import annotations

from lp_jax.engine.request import Request, Status
from lp_jax.engine.scheduler.base import (IterationPlan, PrefillWork, SchedulerState, reserve_decode_slots,
                                          take_prefill_chunks)
from lp_jax.model.config import even_split


class LayeredScheduler:
    name = "layered"

    def __init__(self):
        self.cohort: list[PrefillWork] = []
        self.groups: list[tuple[int, int]] = []
        self.group = 0  # index of the group the cohort runs through next

    def schedule(self, state: SchedulerState) -> IterationPlan:
        L = state.num_layers
        # Members cancelled mid-flight leave; the rest keep their rows (offsets are stable).
        self.cohort = [w for w in self.cohort if w.request.status == Status.PREFILLING]
        if self.cohort and self.group >= len(self.groups):
            self.cohort = []
        decodes, preempted = reserve_decode_slots(state)
        if not self.cohort:
            self._admit_cohort(state)
        if not self.cohort:
            return IterationPlan(L, decodes=decodes, preempted=preempted)
        layers = self.groups[self.group]
        self.group += 1
        return IterationPlan(L, decodes=decodes, prefills=list(self.cohort), prefill_layers=layers,
                             preempted=preempted)

    def _admit_cohort(self, state: SchedulerState) -> None:
        cfg = state.config
        queue = state.prefilling() + list(state.waiting)
        head = queue[0] if queue else None
        if head is not None and _prefill_left(head) > cfg.max_cohort_tokens:
            self.cohort = take_prefill_chunks(state, cfg.lone_prompt_tokens, whole_prompts=True, candidates=[head])
        else:
            self.cohort = take_prefill_chunks(state, cfg.max_cohort_tokens, whole_prompts=True)
        if self.cohort:
            tokens = sum(w.num_tokens for w in self.cohort)
            G = state.config.num_groups_for(tokens, state.num_layers)
            self.groups = even_split(state.num_layers, G)
            self.group = 0


def _prefill_left(req: Request) -> int:
    """Prompt (and, after a preemption, output) tokens it still has to prefill."""
    target = len(req.tokens) if req.status == Status.WAITING else req.prefill_target
    return target - req.num_computed
