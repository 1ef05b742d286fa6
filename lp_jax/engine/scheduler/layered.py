"""Layered prefill (arXiv 2510.08055): the decoder stack is split into G contiguous layer groups;
each iteration one group runs the prefill of a cohort of prompts together with the decodes,
while every other layer runs decodes only. Prefill advances one group per iteration and the
first token is sampled after the last group, so decodes never stall and every layer sees each
prompt token once (each expert's weights are read once per cohort, not once per chunk).

A cohort (FCFS whole waiting prompts, up to max_cohort_tokens tokens and max_num_seqs
running) is admitted only when no cohort is in flight. G follows the cohort's token count (see
EngineConfig.num_groups_for); with group_stages > 1 the groups are cut at pipeline stage bounds
(each stage its own groups, as the paper's vLLM port does). A prompt longer than the cap is a
cohort of its own, of up to max_lone_prompt_tokens tokens (L x group_tokens by default:
G = ceil(tokens / group_tokens) <= L groups, so each iteration's group computes about what a
group_tokens chunk through every layer would, and every layer sees the whole prompt once); a
prompt longer still is prefilled in chunks of that size, each of which traverses all groups
(layered + chunked).

Beyond the paper (issue 19), two options:
- group_rule="adaptive": no G is fixed. Each iteration a cohort runs from the layer it stands at
  through as many layers as keep the cost model's predicted time of the whole iteration (its
  decodes included) within iteration_target_s, at least one: groups are sized at run time from
  the current decode batch, unevenly, and a cohort finishes in as few iterations as that bound
  allows (the predicted time grows with the layers, so the most that fit is a bisection).
- pipelined=True: a new cohort may enter the first layers while earlier cohorts are still in
  later ones. The oldest cohort always advances; each later one, then a new one, only if the
  iteration stays within its budget (adaptive: the predicted time; a fixed rule:
  pipeline_budget prompt-token x layer products) and no call outgrows the row buckets. Cohorts
  hold disjoint rows of the executor's prefill region (doubled when pipelined), so a new cohort is as large as the free rows allow (a lone prompt joins alone,
  whole, if its rows are free), and one never holds a request still in flight in another (a
  prompt prefilled in chunks enters chunk by chunk).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lp_jax.engine.request import Request, Status
from lp_jax.engine.scheduler.base import (IterationPlan, PrefillWork, SchedulerState, reserve_decode_slots,
                                          take_prefill_chunks)
from lp_jax.model.config import even_split


@dataclass
class Cohort:
    """Prompts prefilled together, layer by layer. groups: the fixed groups (a fixed G rule), or
    None (adaptive: each iteration's range is sized then). next_layer: where it runs next."""

    works: list[PrefillWork]
    groups: list[tuple[int, int]] | None
    next_layer: int = 0

    @property
    def tokens(self) -> int:
        return sum(w.num_tokens for w in self.works)

    @property
    def rows(self) -> tuple[int, int]:
        """Its rows [first, end) in the executor's prefill region."""
        return self.works[0].offset, self.works[-1].offset + self.works[-1].num_tokens

    def fixed_range(self) -> tuple[int, int]:
        return next(g for g in self.groups if g[0] == self.next_layer)


class IterationBudget:
    """Whether an iteration's prefill passes [(works, lo, hi)] fit beside its decodes: the cost
    model's predicted device time within iteration_target_s (adaptive), or the prompt-token x layer
    products within pipeline_budget (a fixed rule)."""

    def __init__(self, state: SchedulerState, decodes: list[Request]):
        cfg = state.config
        self.adaptive = cfg.group_rule == "adaptive"
        if self.adaptive and state.predict_s is None:
            raise ValueError("group_rule='adaptive' needs a cost model (the simulator's, or a committed cost table "
                             "of the model for the real executor) to predict iteration times")
        self.state, self.decodes = state, decodes
        self.target_s = cfg.iteration_target_s
        self.token_layers = cfg.pipeline_token_layers(state.num_layers)
        self.max_rows = cfg.max_rows()

    def fits(self, passes: list[tuple[list[PrefillWork], int, int]]) -> bool:
        """Also: no call carries more rows than the row buckets hold (cohorts whose ranges overlap
        share the calls of the overlap)."""
        plan = plan_of(self.state.num_layers, self.decodes, passes)
        if any(len(self.decodes) + sum(w.num_tokens for w in plan.segment_prefills(seg)) > self.max_rows
               for seg in plan.segments()):
            return False
        if not self.adaptive:
            return sum(sum(w.num_tokens for w in works) * (hi - lo) for works, lo, hi in passes) <= self.token_layers
        return self.state.predict_s(plan) <= self.target_s

    def most_layers(self, passes, works: list[PrefillWork], lo: int) -> int:
        """The highest hi in (lo, L] with passes + (works, lo, hi) fitting; lo if none does."""
        good, bad = lo, self.state.num_layers + 1
        while bad - good > 1:
            mid = (good + bad) // 2
            if self.fits(passes + [(works, lo, mid)]):
                good = mid
            else:
                bad = mid
        return good


def plan_of(num_layers: int, decodes: list[Request], passes, preempted=()) -> IterationPlan:
    """The plan of decodes and prefill passes [(works, lo, hi)]: one pass sets the plan's
    prefill_layers; several give each work its own range (and the plan their span)."""
    if not passes:
        return IterationPlan(num_layers, decodes=decodes, preempted=list(preempted))
    if len(passes) == 1:
        works, lo, hi = passes[0]
        return IterationPlan(num_layers, decodes=decodes, prefills=list(works), prefill_layers=(lo, hi),
                             preempted=list(preempted))
    prefills = [dataclasses.replace(w, layers=(lo, hi)) for works, lo, hi in passes for w in works]
    span = (min(lo for _, lo, _ in passes), max(hi for _, _, hi in passes))
    return IterationPlan(num_layers, decodes=decodes, prefills=prefills, prefill_layers=span,
                         preempted=list(preempted))


class LayeredScheduler:
    name = "layered"

    def __init__(self):
        self.cohorts: list[Cohort] = []  # in flight, oldest first

    def schedule(self, state: SchedulerState) -> IterationPlan:
        L = state.num_layers
        for c in self.cohorts:
            # Members cancelled or preempted mid-flight leave; the rest keep their rows (offsets are stable).
            c.works = [w for w in c.works if w.request.status == Status.PREFILLING]
        self.cohorts = [c for c in self.cohorts if c.works and c.next_layer < L]
        decodes, preempted = reserve_decode_slots(state)
        budget = IterationBudget(state, decodes)
        passes: list[tuple[list[PrefillWork], int, int]] = []
        advanced: list[tuple[Cohort, int]] = []
        for c in self.cohorts:
            hi = self._next_hi(c, passes, budget, oldest=not passes)
            if hi > c.next_layer:
                passes.append((c.works, c.next_layer, hi))
                advanced.append((c, hi))
        if not self.cohorts or state.config.pipelined:
            new = self._admit_cohort(state, passes, budget)
            if new is not None:
                hi = self._next_hi(new, passes, budget, oldest=not passes)
                passes.append((new.works, 0, hi))
                advanced.append((new, hi))
                self.cohorts.append(new)
        for c, hi in advanced:
            c.next_layer = hi
        return plan_of(L, decodes, passes, preempted)

    @staticmethod
    def _next_hi(c: Cohort, passes, budget: IterationBudget, oldest: bool) -> int:
        """Where cohort c's range this iteration ends (c.next_layer: it waits). The oldest cohort
        always advances: its fixed group, or at least one layer."""
        if c.groups is not None:
            hi = c.fixed_range()[1]
            return hi if oldest or budget.fits(passes + [(c.works, c.next_layer, hi)]) else c.next_layer
        hi = budget.most_layers(passes, c.works, c.next_layer)
        return max(hi, c.next_layer + 1) if oldest else hi

    def _admit_cohort(self, state: SchedulerState, passes, budget: IterationBudget) -> Cohort | None:
        cfg = state.config
        in_flight = {w.request.request_id for c in self.cohorts for w in c.works}
        queue = [r for r in state.prefilling() + list(state.waiting) if r.request_id not in in_flight]
        if not queue:
            return None
        if not self.cohorts:
            if _prefill_left(queue[0]) > cfg.max_cohort_tokens:
                works = take_prefill_chunks(state, cfg.lone_prompt_tokens, whole_prompts=True, candidates=queue[:1])
            else:
                works = take_prefill_chunks(state, cfg.max_cohort_tokens, whole_prompts=True, candidates=queue)
            return self._cohort(state, works, 0)
        base, rows = self._free_rows(cfg)
        if _prefill_left(queue[0]) > cfg.max_cohort_tokens:  # a lone prompt joins alone, if its rows are free
            queue, cap = queue[:1], min(rows, cfg.lone_prompt_tokens)
        else:
            cap = min(rows, cfg.max_cohort_tokens)
        tokens = self._joining_tokens(state, queue, cap, passes, budget, base)
        if not tokens:
            return None
        works = take_prefill_chunks(state, tokens, whole_prompts=True, candidates=queue)
        return self._cohort(state, works, base)

    def _cohort(self, state: SchedulerState, works: list[PrefillWork], base: int) -> Cohort | None:
        if not works:
            return None
        works = [dataclasses.replace(w, offset=w.offset + base) for w in works] if base else works
        if state.config.group_rule == "adaptive":
            return Cohort(works, None)
        tokens = sum(w.num_tokens for w in works)
        return Cohort(works, fixed_groups(state.num_layers, state.config.num_groups_for(tokens, state.num_layers),
                                          state.config.group_stages))

    def _free_rows(self, cfg) -> tuple[int, int]:
        """(first row, row count) of the largest free stretch of the prefill region."""
        size = cfg.hidden_rows() - cfg.max_num_seqs - 1
        taken = sorted(c.rows for c in self.cohorts)
        best, start = (0, 0), 0
        for lo, hi in taken + [(size, size)]:
            if lo - start > best[1]:
                best = (start, lo - start)
            start = max(start, hi)
        return best

    def _joining_tokens(self, state: SchedulerState, queue: list[Request], cap: int, passes,
                        budget: IterationBudget, base: int) -> int:
        """Prompt tokens of the longest FCFS run of whole prompts (within `cap` and the running
        slots) that can enter beside the cohorts in flight this iteration: its first range (the
        first fixed group, or one layer if adaptive) within the budget; 0 if none can."""
        slots = state.config.max_num_seqs - len(state.running)
        works, total = [], 0
        for req in queue[:max(slots, 0)]:
            n = _prefill_left(req)
            if total + n > cap:
                break
            works.append(PrefillWork(req, req.num_computed, req.num_computed + n, base + total))
            total += n
        L, adaptive = state.num_layers, state.config.group_rule == "adaptive"
        while works:
            tokens = sum(w.num_tokens for w in works)
            cfg = state.config
            hi = 1 if adaptive else fixed_groups(L, cfg.num_groups_for(tokens, L), cfg.group_stages)[0][1]
            if budget.fits(passes + [(works, 0, hi)]):
                return tokens
            works.pop()
        return 0


def fixed_groups(num_layers: int, groups: int, stages: int = 1) -> list[tuple[int, int]]:
    """A fixed rule's G groups: even over all the layers (stages = 1), or each of `stages` equal
    pipeline stages split into ceil(G / stages) groups of its own (groups never span a stage bound)."""
    if stages == 1:
        return even_split(num_layers, groups)
    per_stage = -(-groups // stages)
    return [(lo + a, lo + b) for lo, hi in even_split(num_layers, stages)
            for a, b in even_split(hi - lo, min(per_stage, hi - lo))]


def _prefill_left(req: Request) -> int:
    """Prompt (and, after a preemption, output) tokens it still has to prefill."""
    target = len(req.tokens) if req.status == Status.WAITING else req.prefill_target
    return target - req.num_computed
