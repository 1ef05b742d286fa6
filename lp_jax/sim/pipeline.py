"""Pipeline parallelism in the simulator: S stages, each a device of the same cost table holding a
contiguous share of the layers (`even_split(L, S)`), activations handed from stage to stage over a
link of a stated bandwidth.

`PipelineExecutor` takes the engine's IterationPlans unchanged and keeps a timeline per stage.
An iteration is one *unit* (or, with `micro_batches`, its prefill rows one unit and its decodes
S more: contiguous slices). A unit's calls on a stage are the plan's
segments cut at the stage's bounds (a range covering the stage's whole share is one call, a
smaller one its power-of-two pieces, as on one device). A unit's work on stage s starts when

- stage s has finished what it was given before (each stage runs its calls in order),
- the call is launched: stage 0's calls by the engine's host (as on one device), every later
  stage's by its own worker from the moment the plan is dispatched (launch_s a call),
- its rows are there: from stage s - 1 (its end there + the transfer of the rows that cross),
  a decode row's token from its previous iteration (the sampling head on the last stage + the
  link's latency back to stage 0), a layered cohort's hidden states from the stage where its
  previous group ended (+ a transfer when that is another stage).

A stage runs units in the order they were dispatched (an iteration's prefill unit, then its
slices): the order they reach it unless a transfer takes longer than a slice's work there, which
at NVLink or PCIe rates for these activations (4 KB a row) it does not.

So without micro-batching an iteration with decodes cannot start before the previous one's
tokens exist: the stages take turns (the pipeline bubble). With micro-batching each slice waits
only for its own requests' tokens, and slices of one iteration, and of the next (the engine
dispatches iteration i + 1 before it reads i back), overlap across the stages; each slice's
calls read its stage's weights again, which the cost model counts (dense weights every call,
the distinct experts of each slice's rows).

Transfers: valid rows x hidden size x dtype bytes / link_Bps + link_latency_s, one per unit per
stage boundary its rows cross (each direction its own link). S = 1 is the single-device executor
to the last digit (tests/test_sim_pipeline.py). Not modelled: tp/ep inside a stage, a host that
contends with its device (a CPU table) when S > 1, the KV pool of S devices (the pool stays one
device's: a bound that is not reached at the rates studied here).
"""

from __future__ import annotations

from dataclasses import dataclass

from lp_jax.engine.config import bucket_for
from lp_jax.engine.executor import layer_pieces
from lp_jax.engine.scheduler.base import IterationPlan
from lp_jax.model.config import even_split
from lp_jax.sim.executor import SimFlight, SimulatedExecutor

# Links the studies name (bytes/s per direction): NVLink 4 on an H100/H200 (18 links x 25 GB/s),
# PCIe 5.0 x16.
LINKS = {"nvlink": 450e9, "pcie": 64e9}
LINK_LATENCY_S = 10e-6


@dataclass(frozen=True)
class PipelineSpec:
    """stages: pipeline stages (devices); link_Bps: bytes/s of a link between neighbours, per
    direction; link_latency_s: seconds per transfer on top; micro_batches: decodes cut into
    `stages` slices that flow through the stages independently."""

    stages: int = 1
    link_Bps: float = LINKS["nvlink"]
    link_latency_s: float = LINK_LATENCY_S
    micro_batches: bool = False

    def __post_init__(self):
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"pp (pipeline stages) must be an integer >= 1, got {self.stages!r}")
        if not self.link_Bps > 0:
            raise ValueError(f"link must be > 0 bytes/s (or one of {', '.join(LINKS)}), got {self.link_Bps!r}")
        if not self.link_latency_s >= 0:
            raise ValueError(f"link_latency_s must be >= 0 seconds, got {self.link_latency_s!r}")

    @staticmethod
    def parse(options: list[str]) -> "PipelineSpec":
        """From an executor spec's KEY=VALUE items: pp=S, link=nvlink|pcie|GB/s, mb=true|false."""
        spec = {}
        for item in options:
            key, _, value = item.partition("=")
            if key == "pp":
                spec["stages"] = int(value) if value.isdigit() else value
            elif key == "link":
                spec["link_Bps"] = LINKS[value] if value in LINKS else _gbps(value)
            elif key == "mb":
                if value not in ("true", "false"):
                    raise ValueError(f"mb must be true or false, got {value!r}")
                spec["micro_batches"] = value == "true"
            else:
                raise ValueError(f"unknown executor option {item!r}: the simulator takes pp=STAGES, "
                                 f"link={'|'.join(LINKS)}|GBPS and mb=true|false")
        return PipelineSpec(**spec)

    @property
    def label(self) -> str:
        link = next((k for k, v in LINKS.items() if v == self.link_Bps), f"{self.link_Bps / 1e9:g} GB/s")
        return f"pp={self.stages}, {link}" + (", decode micro-batched" if self.micro_batches else "")


def _gbps(value: str) -> float:
    try:
        return float(value) * 1e9
    except ValueError:
        raise ValueError(f"link must be one of {', '.join(LINKS)} or GB/s per direction, got {value!r}") from None


class PipelineExecutor(SimulatedExecutor):
    """SimulatedExecutor over `pipeline.stages` stages (see the module doc). After a run:
    stage_busy_s[s] (device seconds of stage s), first_start_s / last_end_s (the span of all
    device work), idle_fractions()."""

    def __init__(self, *args, pipeline: PipelineSpec = PipelineSpec(), **kwargs):
        super().__init__(*args, **kwargs)
        S, L = pipeline.stages, self.model.num_layers
        if S > L:
            raise ValueError(f"pp={S} stages for {L} layers: at most one stage a layer")
        if S > 1 and (self.config.tp * self.config.ep > 1 or self.table.host.contention):
            raise ValueError("a pipeline of stages is simulated on one device a stage (tp = ep = 1) of a table "
                             f"whose host does not contend with its device; {self.table.name} has contention "
                             f"{self.table.host.contention}, tp x ep = {self.config.tp * self.config.ep}")
        self.pipeline = pipeline
        self.bounds = even_split(L, S)
        self.stage_free_s = [0.0] * S
        self.stage_busy_s = [0.0] * S
        self.launcher_free_s = [0.0] * S  # stages >= 1: their own workers launch their calls
        self.token_ready_s: dict[int, float] = {}  # request id -> its last token on stage 0
        self.hidden_ready: dict[int, tuple[float, int]] = {}  # prefilling request id -> (time, stage) of its rows
        self.first_start_s, self.last_end_s = None, 0.0
        self.row_bytes = self.model.hidden_size * self.work.dtype_bytes

    def idle_fractions(self) -> list[float]:
        """Per stage: 1 - its busy seconds / the span from the first call to the last (of any stage)."""
        span = self.last_end_s - (self.first_start_s or 0.0)
        return [1.0 - busy / span if span > 0 else 0.0 for busy in self.stage_busy_s]

    def stage_of(self, layer: int) -> int:
        return next(s for s, (lo, hi) in enumerate(self.bounds) if lo <= layer < hi)

    def transfer_s(self, rows: int) -> float:
        return self.pipeline.link_latency_s + rows * self.row_bytes / self.pipeline.link_Bps

    def stage_pieces(self, stage: int, lo: int, hi: int):
        """(full, sliding, ranged) of each call that runs layers [lo, hi) of the stage's share."""
        if (lo, hi) == self.bounds[stage] and self.pipeline.stages > 1:
            return [(c["full"], c["sliding"], False) for c in [self.work.layer_counts(lo, hi - lo)]]
        return [(c["full"], c["sliding"], n != self.model.num_layers) for first, n in
                layer_pieces(lo, hi, self.model.num_layers) for c in [self.work.layer_counts(first, n)]]

    def units(self, plan: IterationPlan) -> list[IterationPlan]:
        """The plan itself, or (micro_batches) its prefill rows as one unit (they wait for no
        token, so the next iteration's can enter stage 0 as soon as this one's leave it) and its
        decodes in `stages` slices."""
        S, decodes = self.pipeline.stages, plan.decodes
        if not self.pipeline.micro_batches or S == 1 or not decodes:
            return [plan]
        cuts = [round(i * len(decodes) / S) for i in range(S + 1)]
        slices = [IterationPlan(plan.num_layers, decodes=decodes[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]
        if not plan.prefills:
            return slices
        return [IterationPlan(plan.num_layers, prefills=plan.prefills, prefill_layers=plan.prefill_layers)] + slices

    def dispatch(self, plan: IterationPlan) -> SimFlight:
        host, clock, S = self.table.host, self.clock, self.pipeline.stages
        start = clock()
        now = clock.advance(host.step_s + host.decode_s * len(plan.decodes) + host.prefill_s * len(plan.prefills))
        if S == 1:
            self.stage_free_s[0] = self.device_free_s  # a host that contends moved it (SimulatedExecutor._host_work)
        for s in range(1, S):
            self.launcher_free_s[s] = max(self.launcher_free_s[s], now)
        busy, ready, segments, sampled = 0.0, 0.0, [], []
        for unit in self.units(plan):
            now, unit_busy, unit_ready, unit_segments, unit_sampled = self._run_unit(unit, now)
            busy += unit_busy
            ready = max(ready, unit_ready)
            segments += unit_segments
            sampled += unit_sampled
        # The engine reads decode tokens first (in its plan's order), then first tokens.
        decode_set = {r.request_id for r in plan.decodes}
        sampled = list(plan.decodes) + [r for r in sampled if r.request_id not in decode_set]
        clock.wait_until(now)
        self.device_free_s = max(self.stage_free_s)
        self.device_busy_s += busy
        flight = SimFlight(segments, sampled, len(plan.decodes), ready, busy)
        self._pending.append(flight)
        self._host_work(start, now - start)
        return flight

    def _launch(self, stage: int, now: float) -> tuple[float, float]:
        """Launch a call on `stage`: (the host clock after it, when the call is launched). Stage
        0's calls are the engine host's (its clock advances), a later stage's its own worker's."""
        launch = self.table.host.launch_s
        if stage == 0:
            return now + launch, now + launch
        self.launcher_free_s[stage] += launch
        return now, self.launcher_free_s[stage]

    def _run_unit(self, unit: IterationPlan, now: float):
        """Schedule one unit's calls on the stages; (host clock after its launches on stage 0,
        device seconds, when its tokens are ready, its segments, the requests it samples)."""
        S, L = self.pipeline.stages, self.model.num_layers
        per_stage: list[list[float]] = [[] for _ in range(S)]
        segments = []
        for seg, call_seconds, info in self._calls(unit):
            for s, (lo, hi) in enumerate(self.bounds):
                a, b = max(lo, seg.layer_lo), min(hi, seg.layer_hi)
                if a < b:
                    per_stage[s] += call_seconds(self.stage_pieces(s, a, b))
            segments.append((seg, *info))
        # Valid rows leaving stage s for s + 1: every decode, and the prefill rows whose range spans the boundary.
        ranges = [(unit.layers_of(w), w.num_tokens) for w in unit.prefills]
        crossing = [len(unit.decodes) + sum(n for (lo, hi), n in ranges if lo < b < hi) for _, b in self.bounds]
        # When rows that enter at each stage (not from the stage before) are there.
        enter = [0.0] * S
        for r in unit.decodes:
            enter[0] = max(enter[0], self.token_ready_s.get(r.request_id, 0.0))
        for w in unit.prefills:
            lo = unit.layers_of(w)[0]
            stage = self.stage_of(lo)
            if lo > 0 and w.request.request_id in self.hidden_ready:
                t, where = self.hidden_ready[w.request.request_id]
                enter[stage] = max(enter[stage], t + (self.transfer_s(w.num_tokens) if where != stage else 0.0))
        busy, arrive, end = 0.0, 0.0, 0.0
        ends = [0.0] * S
        for s in range(S):
            if not per_stage[s]:
                continue
            ready = max(arrive, enter[s])
            device = self.stage_free_s[s]
            for k, seconds in enumerate(per_stage[s]):
                now, launched = self._launch(s, now)
                begin = max(device, launched, ready) if k == 0 else max(device, launched)
                if self.first_start_s is None:
                    self.first_start_s = begin
                device = begin + seconds
                busy += seconds
            self.stage_free_s[s] = ends[s] = end = device
            self.stage_busy_s[s] += sum(per_stage[s])
            arrive = end + self.transfer_s(crossing[s]) if crossing[s] else 0.0
        sampled = list(unit.decodes) + [w.request for w in unit.finishing() if w.completes_prompt]
        if sampled:
            seconds = self._head_s[bucket_for(len(sampled), self.seq_buckets)]
            last = S - 1
            now, launched = self._launch(last, now)
            end = max(self.stage_free_s[last], launched) + seconds
            self.stage_free_s[last] = end
            self.stage_busy_s[last] += seconds
            busy += seconds
            back = end + (self.pipeline.link_latency_s if S > 1 else 0.0)
            for r in sampled:
                self.token_ready_s[r.request_id] = back
            end = back
        for w in unit.prefills:
            hi = unit.layers_of(w)[1]
            if hi < L:
                stage = self.stage_of(hi - 1)
                self.hidden_ready[w.request.request_id] = (ends[stage], stage)
            else:
                self.hidden_ready.pop(w.request.request_id, None)
        self.last_end_s = max(self.last_end_s, end)
        return now, busy, end, segments, sampled
