"""What every schedule shares: the plan it returns, the queues it reads, admission and preemption.

A scheduler is a pure host object: `schedule(state) -> IterationPlan`. It moves requests between
the queues and allocates KV pages, and never touches device arrays, so the same code drives the
real executor and a simulated one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from lp_jax.engine.config import EngineConfig
from lp_jax.engine.kv_cache import BlockManager
from lp_jax.engine.request import Request, Status


@dataclass
class PrefillWork:
    """Prefill of tokens[start:end] of one request. `offset` is the first row of its hidden
    states in the executor's prefill region (stable while a layered cohort is in flight).
    `layers`: the layer range [lo, hi) it runs through this iteration, where it differs from the
    plan's `prefill_layers` (pipelined layered: cohorts in different groups at once); None = the
    plan's."""

    request: Request
    start: int
    end: int
    offset: int = 0
    layers: tuple[int, int] | None = None

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    @property
    def completes_prompt(self) -> bool:
        """Its last row is the request's last prefill token: its logits give the next token."""
        return self.end == self.request.prefill_target


@dataclass(frozen=True)
class Segment:
    """One layer-range call: layers [layer_lo, layer_hi) over decode rows and/or prefill rows;
    `members`: the indices in the plan's prefills whose rows it carries."""

    layer_lo: int
    layer_hi: int
    decode: bool
    prefill: bool
    members: tuple[int, ...] = ()


@dataclass
class IterationPlan:
    """One iteration: every decode runs through all layers; the prefill rows run through
    `prefill_layers` (all layers for prefill_first and chunked, one group for layered)."""

    num_layers: int
    decodes: list[Request] = field(default_factory=list)
    prefills: list[PrefillWork] = field(default_factory=list)
    prefill_layers: tuple[int, int] = (0, 0)
    preempted: list[Request] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.decodes and not self.prefills

    @property
    def prefill_tokens(self) -> int:
        return sum(w.num_tokens for w in self.prefills)

    def layers_of(self, work: PrefillWork) -> tuple[int, int]:
        """The layer range [lo, hi) a prefill work runs through this iteration."""
        return work.layers or self.prefill_layers

    def finishing(self) -> list[PrefillWork]:
        """The prefill works whose rows leave the last layer this iteration."""
        return [w for w in self.prefills if self.layers_of(w)[1] == self.num_layers]

    @property
    def prefill_finishes_layers(self) -> bool:
        """Some prefill rows leave the last layer this iteration."""
        return bool(self.finishing())

    def segment_prefills(self, seg: Segment) -> list[PrefillWork]:
        """The prefill works whose rows a segment carries."""
        return [self.prefills[i] for i in seg.members]

    def segments(self) -> list[Segment]:
        """The layers cut at every prefill range's ends: each piece carries the decodes and the
        prefills whose range covers it (one range: decode-only below it, mixed inside, decode-only
        above; pipelined cohorts in different groups: a mixed piece per range, or per overlap)."""
        L = self.num_layers
        if not self.prefills:
            return [Segment(0, L, True, False)] if self.decodes else []
        ranges = [self.layers_of(w) for w in self.prefills]
        bounds = sorted({0, L}.union(*ranges))
        dec = bool(self.decodes)
        segs = []
        for lo, hi in zip(bounds, bounds[1:]):
            members = tuple(i for i, (a, b) in enumerate(ranges) if a <= lo and hi <= b)
            if members or dec:
                segs.append(Segment(lo, hi, dec, bool(members), members))
        return segs


class SchedulerState:
    """The queues: `waiting` (FCFS; preempted requests go back to its front) and `running`
    (admitted, prefilling or decoding, in admission order), plus the page allocator and, where one
    is known, `predict_s(plan) -> seconds`: the cost model's device time of a plan (the adaptive
    layered schedule sizes its groups by it)."""

    def __init__(self, config: EngineConfig, num_layers: int, blocks: BlockManager,
                 predict_s: Callable[["IterationPlan"], float] | None = None):
        self.config = config
        self.predict_s = predict_s
        self.num_layers = num_layers
        self.blocks = blocks
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.iteration = 0

    def decoding(self) -> list[Request]:
        return [r for r in self.running if r.status == Status.DECODING]

    def prefilling(self) -> list[Request]:
        return [r for r in self.running if r.status == Status.PREFILLING]

    def admit(self, req: Request) -> None:
        """Waiting -> running (prefilling)."""
        self.waiting.remove(req)
        self.running.append(req)
        req.start_prefill()

    def preempt(self, req: Request) -> None:
        """Free its pages and send it back to the front of the waiting queue; its outputs are
        kept and its K/V recomputed (prompt + outputs) when it is admitted again."""
        self.blocks.release(req.request_id)
        self.running.remove(req)
        req.status = Status.WAITING
        req.num_computed = 0
        req.prefill_target = 0
        req.num_preemptions += 1
        self.waiting.appendleft(req)

    def remove(self, req: Request) -> None:
        """A request leaves the engine (finished or cancelled): drop it and free its pages."""
        self.blocks.release(req.request_id)
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)


def reserve_decode_slots(state: SchedulerState):
    """Give every decoding request a KV slot for its next token, preempting the most recently
    admitted decodes when pages run out. Returns (decodes that run, preempted requests).
    Only decodes are candidates: a layered cohort in flight is prefilling, so never preempted here.
    """
    decodes = state.decoding()
    preempted: list[Request] = []
    i = 0
    reserve = state.blocks.reserve
    while i < len(decodes):
        req = decodes[i]
        if reserve(req.request_id, req.num_computed + 1):
            i += 1
            continue
        victim = decodes[-1]
        decodes.remove(victim)
        state.preempt(victim)
        preempted.append(victim)
    return decodes, preempted


def take_prefill_chunks(state: SchedulerState, budget: int, *, whole_prompts: bool = False,
                        candidates: list[Request] | None = None, keep_free: int = 0) -> list[PrefillWork]:
    """Prefill chunks up to `budget` tokens: unfinished prefills first (admission order), then
    waiting requests (FCFS, admitted here). Stops at the first request that cannot get its pages
    (leaving `keep_free` pages free: a watermark) or a running slot, so FCFS order is kept.

    whole_prompts: a waiting prompt is taken only whole, except a prompt longer than the budget,
    which is taken alone in budget-sized chunks (prefill_first).
    """
    works: list[PrefillWork] = []
    offset = 0
    cfg = state.config
    queue = candidates if candidates is not None else state.prefilling() + list(state.waiting)
    for req in queue:
        if budget <= 0:
            break
        new = req.status == Status.WAITING
        if new and (len(state.running) >= cfg.max_num_seqs or req.num_pending):
            break  # no slot; or preempted with a token still in flight, which its recompute needs
        start = req.num_computed
        remaining = (req.num_tokens if new else req.prefill_target) - start
        if whole_prompts and new and remaining > budget and works:
            break
        n = min(remaining, budget)
        if state.blocks.pages_needed(req.request_id, start + n) > state.blocks.num_free() - keep_free:
            break
        if new:
            state.admit(req)
        state.blocks.allocate(req.request_id, start + n)
        works.append(PrefillWork(req, start, start + n, offset))
        offset += n
        budget -= n
    return works
