"""`SimulatedExecutor`: the executor seam of the engine, with the forward pass replaced by a cost
model and a virtual clock.

It receives the same IterationPlans as `ModelExecutor` and answers `dispatch` / `fetch` the same
way, so the engine, its schedulers, the KV block manager and the metrics run unchanged. Instead
of launching compiled steps it advances two timelines:

- the host (the engine's clock): per iteration, the engine's own work (scheduling, row building,
  bookkeeping; `HostParams`), then a launch per executable call; reading an iteration back waits
  until its tokens are on the device and then costs a read-back;
- the device: each call starts when it has been launched and the previous call has finished, and
  runs for the cost model's time; the sampled tokens of an iteration are ready when its last call
  (the sampling head) ends.

The engine dispatches iteration i+1 before it reads iteration i back, so host work overlaps the
device exactly as in the real pipelined engine, and a token's time is when the host has it.

Calls are the real executor's: each plan segment runs at its row bucket, a layer range other
than the whole model as its power-of-two pieces (`layer_pieces`), then one sampling call over the
sampled-row bucket. Sampled tokens carry no information (the bench ignores end-of-sequence): a
fixed token that is no stop token of the model or of the request; output lengths come from the
requests' max_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lp_jax.model.config import ModelConfig
from lp_jax.engine.config import EngineConfig, bucket_for
from lp_jax.engine.executor import ExecutionResult, SegmentRecord, layer_pieces
from lp_jax.engine.kv_cache import BlockManager
from lp_jax.engine.request import Request
from lp_jax.engine.scheduler.base import IterationPlan
from lp_jax.parallel.collectives import layer_all_reduce_s
from lp_jax.sim.clock import VirtualClock
from lp_jax.sim.cost_model import CostTable
from lp_jax.sim.expert_load import ExpertLoad, expert_load
from lp_jax.sim.work import WorkModel, kernel_block_m


@dataclass(eq=False)  # identity: fetch removes this very flight from the pending ones
class SimFlight:
    """A simulated iteration in flight: what fetch needs, and when its tokens are ready.

    segments: (segment, decode rows in it, [(request id, prefill rows)] in it, expected distinct
    experts and row tiles per layer); ready_s: when its sampled tokens are on the device (clock seconds);
    device_s: device time of its calls (seconds)."""

    segments: list
    sampled: list[Request]
    num_decodes: int
    ready_s: float
    device_s: float


class SimulatedExecutor:
    """The executor interface (precompile, dispatch, fetch, execute) over a cost table."""

    num_executables = 0

    def __init__(self, model: ModelConfig, config: EngineConfig, blocks: BlockManager, table: CostTable,
                 clock: VirtualClock, load: ExpertLoad | None = None, record_rows: bool = False):
        if table.model != model.name:
            raise ValueError(f"cost table {table.name} is for {table.model}, not {model.name}")
        self.model, self.config, self.blocks, self.table, self.clock = model, config, blocks, table, clock
        self.load = load or (expert_load(model.num_experts, model.num_experts_per_tok, config.routing)
                             if model.is_moe else None)
        self.buckets, self.seq_buckets = config.buckets(), config.seq_buckets()
        self.work = WorkModel(model, np.dtype(table.dtype).itemsize, table.backend,
                              config.pages_per_seq(model) * config.page_size, self.load,
                              kernel_block_m(model, table.kernel_tiles_device or table.device_kind),
                              tp=config.tp, ep=config.ep)
        # Under tp x ep every layer also all-reduces its rows twice, at the table's measured cost.
        devices = config.tp * config.ep
        self._all_reduce = table.all_reduce_cost(devices) if devices > 1 else None
        self._collective_s: dict[int, float] = {}  # row bucket -> seconds of one layer's all-reduces
        self._pending: list[SimFlight] = []  # dispatched, not yet fetched
        self.device_free_s = 0.0  # when the device finishes everything launched so far
        self.device_busy_s = 0.0  # total device time of the calls simulated
        self._pieces: dict[tuple[int, int], list[tuple[int, dict[str, int]]]] = {}
        self._head_s = {B: table.head_s(B, self.work.head_bytes, self.work.head_flops_per_row) for B in self.seq_buckets}
        stops = set(model.eos_token_ids)
        self.token = next(t for t in range(model.vocab_size) if t not in stops)

    def precompile(self, progress=None) -> None:
        """Nothing to compile."""

    def pieces(self, layer_lo: int, layer_hi: int) -> list[tuple[int, int, bool]]:
        """(full layers, sliding layers, whether a range step) of each call that runs [layer_lo, layer_hi)."""
        key = (layer_lo, layer_hi)
        if key not in self._pieces:
            L = self.model.num_layers
            self._pieces[key] = [(c["full"], c["sliding"], n != L) for lo, n in layer_pieces(layer_lo, layer_hi, L)
                                 for c in [self.work.layer_counts(lo, n)]]
        return self._pieces[key]

    def collective_s(self, rows: int) -> float:
        """Seconds of one layer's all-reduces over `rows` padded rows (0 on one device)."""
        if self._all_reduce is None:
            return 0.0
        if rows not in self._collective_s:
            self._collective_s[rows] = layer_all_reduce_s(self._all_reduce, self.model, self.config.tp,
                                                          self.config.ep, rows, self.work.dtype_bytes)
        return self._collective_s[rows]

    # --- one iteration ----------------------------------------------------------------------
    def _host_work(self, start_s: float, seconds: float) -> None:
        """The host worked `seconds` from start_s: while the device was busy it lost contention x
        the overlap, so everything not finished by start_s moves back by that."""
        overlap = min(seconds, self.device_free_s - start_s)
        if overlap > 0 and self.table.host.contention:
            lost = self.table.host.contention * overlap
            self.device_free_s += lost
            for flight in self._pending:
                if flight.ready_s > start_s:
                    flight.ready_s += lost

    def dispatch(self, plan: IterationPlan) -> SimFlight:
        host, clock = self.table.host, self.clock
        decodes, works = plan.decodes, plan.prefills
        start = clock()
        now = clock.advance(host.step_s + host.decode_s * len(decodes) + host.prefill_s * len(works))
        launch = host.launch_s
        device, busy = self.device_free_s, 0.0
        segments = []
        for seg, call_seconds, info in self._calls(plan):
            for seconds in call_seconds:
                now += launch  # the device starts a call once it is launched and the last one is done
                device = (device if device > now else now) + seconds
                busy += seconds
            segments.append((seg, *info))
        sampled = list(decodes) + [w.request for w in plan.finishing() if w.completes_prompt]
        if sampled:
            seconds = self._head_s[bucket_for(len(sampled), self.seq_buckets)]
            now += launch
            device = (device if device > now else now) + seconds
            busy += seconds
        clock.wait_until(now)
        self.device_free_s = device
        self.device_busy_s += busy
        flight = SimFlight(segments, sampled, len(decodes), device, busy)
        self._pending.append(flight)
        self._host_work(start, now - start)
        return flight

    def _calls(self, plan: IterationPlan):
        """Per plan segment: (segment, device seconds of each of its calls, (decode rows, [(request
        id, prefill rows)], expected distinct experts and row tiles per layer))."""
        table = self.table
        call_s, range_row_s = table.device_params.call_s, table.device_params.range_row_s
        contexts = [r.num_computed + 1 for r in plan.decodes]
        for seg in plan.segments():
            ctx = contexts if seg.decode else []
            works = plan.segment_prefills(seg)
            seg_prefills = [(w.start, w.end) for w in works]
            seg_tokens = tuple(e - s for s, e in seg_prefills)
            rows = bucket_for(len(ctx) + sum(seg_tokens), self.buckets)
            distinct = self.load.expected_distinct(len(ctx), seg_tokens) if self.load else 0.0
            tiles = self.work.row_tiles(len(ctx), seg_tokens) if self.load else 0.0
            layer = self.work.layer_works(rows, ctx, seg_prefills, expected=distinct)
            comm = self.collective_s(rows)
            full = table.layer_s(layer["full"]) + comm if "full" in layer else 0.0
            sliding = table.layer_s(layer["sliding"]) + comm if "sliding" in layer else 0.0
            seconds = [call_s + n_full * full + n_sliding * sliding + (range_row_s * rows if ranged else 0.0)
                       for n_full, n_sliding, ranged in self.pieces(seg.layer_lo, seg.layer_hi)]
            yield seg, seconds, (len(ctx), [(w.request.request_id, w.num_tokens) for w in works], distinct, tiles)

    def predict_s(self, plan: IterationPlan) -> float:
        """Device seconds the cost model gives one iteration of this plan (its layer calls and its
        sampling call), without running it: what the adaptive layered schedule sizes groups by."""
        seconds = sum(sum(call_seconds) for _, call_seconds, _ in self._calls(plan))
        sampled = len(plan.decodes) + sum(w.completes_prompt for w in plan.finishing())
        return seconds + (self._head_s[bucket_for(sampled, self.seq_buckets)] if sampled else 0.0)

    def fetch(self, flight: SimFlight) -> ExecutionResult:
        """Wait (on the virtual clock) for the iteration's tokens and read them back."""
        self._pending.remove(flight)
        self.clock.wait_until(flight.ready_s)
        self._host_work(self.clock(), self.table.host.readback_s)
        self.clock.advance(self.table.host.readback_s)
        L, n_dec, sampled = self.model.num_layers, flight.num_decodes, flight.sampled
        decode_rows = dict.fromkeys([r.request_id for r in sampled[:n_dec]], 1)
        records = []
        for seg, n_seg_dec, prefill_rows, distinct, tiles in flight.segments:
            rows = dict(decode_rows) if n_seg_dec else {}
            for rid, n in prefill_rows:
                rows[rid] = rows.get(rid, 0) + n
            counts, tiles_L = np.zeros(L), np.zeros(L)
            counts[seg.layer_lo:seg.layer_hi] = distinct
            tiles_L[seg.layer_lo:seg.layer_hi] = tiles
            records.append(SegmentRecord(seg.layer_lo, seg.layer_hi, rows, counts, tiles_L))
        token, token_for = self.token, self.token_for
        decode_tokens = [token if not r.params.stop_token_ids else token_for(r) for r in sampled[:n_dec]]
        first = {r.request_id: token_for(r) for r in sampled[n_dec:]}
        return ExecutionResult(decode_tokens, first, records)

    def execute(self, plan: IterationPlan) -> ExecutionResult:
        return self.fetch(self.dispatch(plan))

    def token_for(self, req: Request) -> int:
        """The token every sampling of `req` returns: never one of its stop tokens."""
        stops = req.params.stop_token_ids
        if self.token not in stops:
            return self.token
        return next(t for t in range(self.model.vocab_size) if t not in stops and t not in self.model.eos_token_ids)
