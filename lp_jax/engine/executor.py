"""The only part of the engine that knows JAX shapes: it turns an IterationPlan into calls of
compiled step functions and returns the sampled tokens.

- Weights are stacked over layers ([L, ...] per weight) and a step function loops over them, so
  its argument count does not grow with the number of layers. Every step's layer loop has a
  static trip count: on the GPU, XLA runs such a loop without the host in it, while a traced trip
  count makes it copy the predicate to the host after every layer and launch the next layer's ~60
  kernels one by one, blocking the launching call (H100, Qwen3-30B-A3B decode at batch 64: 38.8 ms
  per engine step traced, 34.4 ms static). So per row bucket there is the whole-model step
  (layers 0..L) and, for layered, range steps of n = 1, 2, 4, ... < L layers from a traced first
  layer: a layer range [lo, hi) runs as its binary pieces (`layer_pieces`), at most log2(L) + 1
  calls. Rejected (notes_engine.md): one traced-bounds range step (the host round trips above),
  and the same as a CUDA graph conditional node (XLA's command buffers with WHILE: a 200-request
  run hit an illegal memory access).
- KV pools ([L, P, Z, N, A]), the hidden-state buffer and the sampled-token buffer are donated
  into every call.
- The hidden buffer (EngineConfig.hidden_rows) keeps the hidden states of a layered cohort on
  the device between iterations (max(token_budget, max_prefill_tokens, max_cohort_tokens,
  max_lone_prompt_tokens) rows from row max_num_seqs on); decode rows use rows [0, max_num_seqs)
  within an iteration; the last row is the padding rows' trash.
- Asynchronous: `dispatch(plan)` enqueues an iteration and returns at once; `fetch` reads its
  sampled tokens (and expert counts and tiles) back in one transfer. The sampled tokens also stay in a
  device buffer [max_num_seqs], from which the next iteration's decode rows take their input
  tokens, so iteration i+1 can be dispatched before iteration i's tokens reach the host.
- Under tp x ep > 1 (EngineConfig) the weights are split over a device mesh by their logical
  axes and the KV pools by their KV heads (`lp_jax.parallel`); attention and the MoE run per
  shard under shard_map; everything the host feeds in (row batches, sampling arrays) and the
  hidden and sampled-token buffers are replicated, so the rest of this file is unchanged.
- Every executable (each row bucket; each sampled-row bucket, greedy or not) is compiled at
  start-up, once per process (`compile_cache`); `compile_counter` checks that serving compiles
  nothing more.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from lp_jax.engine.batch import ON_HOST, RowBatch, RowBatchBuilder
from lp_jax.engine.compile_cache import COMPILE_THREADS, CompileJob, compile_all
from lp_jax.engine.config import EngineConfig, bucket_for
from lp_jax.engine.kv_cache import BlockManager, allocate_pools
from lp_jax.engine.request import Request
from lp_jax.engine.sampling import greedy, sample
from lp_jax.engine.scheduler.base import IterationPlan
from lp_jax.model.config import ModelConfig
from lp_jax.model.forward import decoder_layer, unembed
from lp_jax.model.layers import EXPERT_WEIGHTS, expert_traffic
from lp_jax.model.routing import RoutingProfile, RowRouting, get_profile, log_popularity
from lp_jax.parallel.kernels import sharded_moe_experts, sharded_write_and_attend
from lp_jax.parallel.layout import POOL_AXES, Layout, head_axes, make_layout, place, stacked_layer_axes
from pallas_kernels.attention_reference import FULL_WINDOW
from pallas_kernels.dispatch import attention_plan, moe_block_m, serving_backends


def stack_layers(layers: list[dict] | dict) -> dict:
    """[L] per-layer dicts -> one dict of [L, ...] arrays (an already stacked dict is returned)."""
    if isinstance(layers, dict):
        return layers
    return {name: jnp.stack([lp[name] for lp in layers]) for name in layers[0]}


def layer_pieces(layer_lo: int, layer_hi: int, num_layers: int) -> list[tuple[int, int]]:
    """The (first layer, layer count) calls that run layers [layer_lo, layer_hi): the whole model
    is one call; any other range is cut into power-of-two counts, largest first."""
    if not 0 <= layer_lo < layer_hi <= num_layers:
        raise ValueError(f"layer range [{layer_lo}, {layer_hi}) is not a non-empty part of 0..{num_layers}")
    if (layer_lo, layer_hi) == (0, num_layers):
        return [(0, num_layers)]
    pieces, lo = [], layer_lo
    while lo < layer_hi:
        n = 1 << ((layer_hi - lo).bit_length() - 1)
        pieces.append((lo, n))
        lo += n
    return pieces


def range_lengths(num_layers: int) -> list[int]:
    """Layer counts of the range steps `layer_pieces` can call: the powers of two below L."""
    return [1 << i for i in range((num_layers - 1).bit_length())]


def run_layers(model: ModelConfig, backend, routing: RoutingProfile, layout: Layout, num_run: int, stacked, embed_VD,
               sampled_S, hidden_RD, k_pool, v_pool, batch: RowBatch, layer_lo=0):
    """Run the batch's rows through layers [layer_lo, layer_lo + num_run): num_run is static (the
    loop's trip count), layer_lo an int or a traced int32. sampled_S [max_num_seqs] int32: the
    previous iteration's sampled tokens (rows with prev_T >= 0 read theirs there). routing: the
    routing profile (a calibrated one draws each row's experts from its routing seed and position).
    layout: the tensor / expert split (attention and experts run per shard; one device: as they are).

    Returns (hidden buffer with the rows' outputs written, K pool, V pool, expert traffic [2, L]
    int32: per layer the distinct experts that received a row and the row tiles the grouped
    matmul streams (block_m as the Pallas kernels choose it for this row count); 0 outside the
    range).
    """
    tokens_T = jnp.where(batch.prev_T >= 0, sampled_S[jnp.maximum(batch.prev_T, 0)], batch.tokens_T)
    x = jnp.where(batch.from_embed_T[:, None], embed_VD[tokens_T], hidden_RD[batch.src_T])
    counts = jnp.zeros((2, model.num_layers), jnp.int32)
    calibrated = model.is_moe and not routing.uses_router
    if model.is_moe:
        block_m = moe_block_m(model.num_experts, model.hidden_size, model.ffn_size,
                              x.shape[0] * model.num_experts_per_tok)
    if calibrated:
        log_pop_LE = jnp.asarray(log_popularity(routing, model.num_experts, model.num_layers))
    # The attention kernel's tile plan depends on the rows and the window only: made once here for
    # each distinct window of the model, each layer picks its own (None on the reference path).
    layer_windows = [model.layer_window(i) or FULL_WINDOW for i in range(model.num_layers)]
    windows_L = jnp.asarray(layer_windows, jnp.int32)
    windows = sorted(set(layer_windows))
    window_index_L = jnp.asarray([windows.index(w) for w in layer_windows], jnp.int32)
    # Planned for one shard's heads (the kernel runs per shard; the plan is the same on each).
    plan = attention_plan(batch.seq_T, batch.pos_T, H=model.num_heads // layout.tp, N=model.num_kv_heads // layout.tp,
                          A=model.head_dim,
                          Z=k_pool.shape[2], num_seqs=batch.block_tables_BM.shape[0], dtype=k_pool.dtype,
                          windows=windows, backend=backend)
    experts_fn = functools.partial(sharded_moe_experts, layout, model)

    def body(i, carry):
        x, k_pool, v_pool, counts = carry
        layer = layer_lo + i
        # Expert stacks go whole to the MoE kernels, which index the layer in place (slicing them
        # here would copy every layer's experts); the rest is sliced.
        in_place = EXPERT_WEIGHTS if model.is_moe else ()
        lp = {name: w if name in in_place else w[layer] for name, w in stacked.items()}
        pools = {}

        def attend(q, k, v):
            # Write this call's K/V first; attention then reads only pages. The stacked sinks and
            # every layer's window index go whole: the kernel reads them at `layer`, so no
            # per-layer slice runs in XLA (the reference slices them itself).
            o, pools["k"], pools["v"] = sharded_write_and_attend(
                layout, q, k, v, k_pool, v_pool, layer, batch.page_T, batch.offset_T, batch.block_tables_BM,
                batch.seq_T, batch.pos_T, window=windows_L[layer], sinks_H=stacked.get("sinks"), backend=backend,
                plan=plan, window_index=window_index_L if len(windows) > 1 else 0)
            return o

        rows = (RowRouting(routing, log_pop_LE[layer], batch.routing_seed_T, batch.pos_T, layer)
                if calibrated else None)
        x, ids = decoder_layer(model, lp, x, batch.pos_T, attend, batch.valid_T, backend,
                               layer if model.is_moe else None, rows, experts_fn)
        if ids is not None:
            counts = counts.at[:, layer].set(expert_traffic(ids, model.num_experts, block_m, batch.valid_T))
        return x, pools["k"], pools["v"], counts

    x, k_pool, v_pool, counts = jax.lax.fori_loop(0, num_run, body, (x, k_pool, v_pool, counts))
    return hidden_RD.at[batch.dst_T].set(x), k_pool, v_pool, counts


def head_and_sample(model: ModelConfig, greedy_only: bool, head, hidden_RD, sampled_S, rows_B, temperature_B,
                    top_k_B, top_p_B, seed_B, step_B):
    """Final norm, LM head and sampling of the hidden rows `rows_B` (B <= S).

    Returns (sampled_S with the B tokens written to slots [0, B), token ids [B] int32)."""
    logits = unembed(model, head, hidden_RD[rows_B])
    if greedy_only:
        tokens = greedy(logits)
    else:
        tokens = sample(logits, temperature_B, top_k_B, top_p_B, seed_B, step_B)
    return jax.lax.dynamic_update_slice(sampled_S, tokens, (0,)), tokens


@dataclass
class SegmentRecord:
    """What one layer-range call did, for expert-traffic accounting and tests."""

    layer_lo: int
    layer_hi: int
    rows_per_request: dict[int, int]
    expert_counts_L: np.ndarray  # distinct experts per layer (0 outside the range)
    expert_tiles_L: np.ndarray  # row tiles the grouped matmul streams per layer (0 outside the range)
    row_tokens: list[tuple[int, int]] = field(default_factory=list)  # (request id, position) per row, when recorded


@dataclass
class ExecutionResult:
    decode_tokens: list[int]
    prefill_tokens: dict[int, int]  # request id -> first token, for prefills completing their prompt
    segments: list[SegmentRecord]


@dataclass
class Prepared:
    """An iteration's host-built inputs, ready to launch (launching one twice reruns it)."""

    calls: list[tuple]  # (Segment, [(first layer, layer count, RowBatch)] per piece, rows per request, row tokens)
    sampled: list[Request]  # requests a token is sampled for: the plan's decodes, then completing prefills
    num_decodes: int
    sample_args: tuple | None  # see ModelExecutor._sample_args; None when nothing is sampled


@dataclass
class InFlight:
    """An iteration dispatched to the device and not yet read back."""

    segments: list[tuple]  # (Segment, rows per request, expert traffic [2, L] on device per piece, row tokens)
    sampled: list[Request]  # requests a token was sampled for: the plan's decodes, then completing prefills
    num_decodes: int
    tokens_B: jax.Array | None  # [B >= len(sampled)] on device, None when nothing was sampled


class ModelExecutor:
    """Owns the device state (weights, KV pools, hidden and sampled-token buffers) and the
    compiled executables."""

    def __init__(self, model: ModelConfig, config: EngineConfig, params: dict, blocks: BlockManager,
                 dtype, backend: str | None = None, record_rows: bool = False, free_params: bool = False):
        self.model, self.config, self.blocks = model, config, blocks
        self.dtype = jnp.dtype(dtype)
        self.record_rows = record_rows
        self.layout = layout = make_layout(model, config.tp, config.ep)
        self.stacked = self._place(stack_layers(params["layers"]), stacked_layer_axes(model), free_params)
        self.head = self._place(params, {k: a for k, a in head_axes(model).items() if k in params}, free_params)
        pools = layout.sharding(POOL_AXES) if layout.sharded else None
        self.k_pool, self.v_pool = allocate_pools(model, blocks.num_pages, blocks.page_size, self.dtype, pools)
        self.prefill_base = config.max_num_seqs
        num_rows = config.hidden_rows()
        self.trash_row = num_rows - 1
        self.hidden_RD = self._replicate(jnp.zeros((num_rows, model.hidden_size), self.dtype))
        self.sampled_S = self._replicate(jnp.zeros((config.max_num_seqs,), jnp.int32))
        self.slot_of: dict[int, int] = {}  # request id -> slot of its token in sampled_S (last sampling call)
        self.pages_per_seq = config.pages_per_seq(model)
        self.buckets = config.buckets()
        self.seq_buckets = config.seq_buckets()
        # Layer count -> jitted step; L is the whole model (first layer 0, static), the others
        # take a traced first layer (layered only).
        lengths = [model.num_layers] + (range_lengths(model.num_layers) if self.uses_ranges else [])
        routing = get_profile(config.routing)
        # Under a mesh the results keep the layout the next call takes (the pools their heads' split,
        # the rest replicated), so donation reuses the buffers.
        step_out = (self._replicated, pools, pools, self._replicated) if layout.sharded else None
        sample_out = (self._replicated, self._replicated) if layout.sharded else None
        self._step_fns = {n: jax.jit(functools.partial(run_layers, model, backend, routing, layout, n),
                                     donate_argnums=(3, 4, 5), out_shardings=step_out)
                          for n in lengths}
        self._sample_fn = jax.jit(functools.partial(head_and_sample, model), static_argnums=(0,), donate_argnums=(3,),
                                  out_shardings=sample_out)
        kernels = serving_backends(D=model.hidden_size, F=model.moe_intermediate_size if model.is_moe else None,
                                   H=model.num_heads, N=model.num_kv_heads, A=model.head_dim, Z=blocks.page_size,
                                   dtype=self.dtype, backend=backend)
        # What the executables depend on besides their argument shapes: the kernels that serve (not the
        # raw option, see serving_backends), the routing profile (it changes the layer steps only,
        # but one key for both is simpler and costs no compilation) and the tp x ep split.
        self._kind = (model, kernels, routing, (layout.tp, layout.ep))
        self._step_exe: dict[tuple[int, int], object] = {}  # (layer count, row bucket) -> step
        self._sample_exe: dict[tuple[int, bool], object] = {}

    # --- placement --------------------------------------------------------------------------
    @property
    def _replicated(self):
        return self.layout.replicated() if self.layout.sharded else None

    def _place(self, weights: dict, axes: dict, free: bool) -> dict:
        """The weights named in `axes`, cast to the engine's dtype and, under a mesh, split by their
        logical axes. free: take each out of `weights` as it is placed (the engine made them), so
        that the whole weight is freed once split, not when the caller lets go of the dict: the
        first device's memory plan counts only its shards."""
        out = {}
        for name in axes:
            out[name] = jnp.asarray(weights.pop(name) if free and self.layout.sharded else weights[name], self.dtype)
            if self.layout.sharded:
                out[name] = place(out[name], self.layout.sharding(axes[name]))
        return out

    def _replicate(self, array):
        return place(array, self.layout.replicated()) if self.layout.sharded else array

    def _struct(self, shape, dtype, sharding=None) -> jax.ShapeDtypeStruct:
        """An abstract argument; under a mesh host inputs (row batches, scalars) are replicated."""
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding or self._replicated)

    # --- compilation ------------------------------------------------------------------------
    @property
    def uses_ranges(self) -> bool:
        """Whether iterations may run part of the layers (layered: a group's prefill range)."""
        return self.config.schedule == "layered"

    @property
    def num_executables(self) -> int:
        """Executables `precompile` builds: a step per layer count and row bucket (the whole model,
        and for layered the range lengths) and a greedy and a sampling head per sampled-row bucket."""
        return len(self.buckets) * len(self._step_fns) + 2 * len(self.seq_buckets)

    def step_state(self) -> tuple:
        """The device state a layer step takes before its batch: (stacked weights, embedding,
        sampled tokens, hidden buffer, K pool, V pool); the last three are donated."""
        return self.stacked, self.head["embed"], self.sampled_S, self.hidden_RD, self.k_pool, self.v_pool

    def first_layer_args(self, n: int, first) -> tuple:
        """The first-layer argument of the n-layer step: none for the whole model (its first
        layer is a static 0), else (first,) (an int32 or its abstract shape)."""
        return () if n == self.model.num_layers else (first,)

    def _batch_struct(self, T: int) -> RowBatch:
        i32, b = self._struct((T,), jnp.int32), self._struct((T,), jnp.bool_)
        tables = self._struct((self.config.max_num_seqs + 1, self.pages_per_seq), jnp.int32)
        return RowBatch(tokens_T=i32, prev_T=i32, from_embed_T=b, src_T=i32, dst_T=i32, pos_T=i32, seq_T=i32,
                        page_T=i32, offset_T=i32, valid_T=b, routing_seed_T=i32, block_tables_BM=tables)

    def precompile(self, progress=None) -> None:
        """Compile every executable serving can need; `progress(done, total)` is told before the
        first and after each one (a full-size layer step takes ~4.5 s on the GPU machine).

        The whole-model steps and sampling heads compile one at a time: on the GPU, XLA times
        candidate kernels for each new matmul shape, and compiles side by side would time them
        against each other. Range steps repeat the whole step's shapes (its autotuning results
        are cached), so they compile on COMPILE_THREADS threads."""
        shape = lambda a: self._struct(a.shape, a.dtype, a.sharding if self.layout.sharded else None)  # noqa: E731
        scalar = self._struct((), jnp.int32)
        state = jax.tree.map(shape, self.step_state())
        options, L = self.config.compiler_options, self.model.num_layers
        steps = {(n, T): CompileJob(("layers", n) + self._kind, fn,
                                    (*state, self._batch_struct(T), *self.first_layer_args(n, scalar)), options)
                 for T in self.buckets for n, fn in self._step_fns.items()}
        heads = {}
        for B in self.seq_buckets:
            i32, f32 = self._struct((B,), jnp.int32), self._struct((B,), jnp.float32)
            for greedy_only in (True, False):
                heads[B, greedy_only] = CompileJob(
                    ("sample",) + self._kind, self._sample_fn,
                    (greedy_only, jax.tree.map(shape, self.head), shape(self.hidden_RD), shape(self.sampled_S),
                     i32, f32, i32, f32, i32, i32), options)
        serial = [(self._step_exe, k, job) for k, job in steps.items() if k[0] == L]
        serial += [(self._sample_exe, k, job) for k, job in heads.items()]
        ranges = [(self._step_exe, k, job) for k, job in steps.items() if k[0] != L]
        total, count = self.num_executables, iter(range(1, self.num_executables + 1))
        tick = (lambda: progress(next(count), total)) if progress else (lambda: None)
        if progress:
            progress(0, total)
        for entries, threads in ((serial, 1), (ranges, COMPILE_THREADS)):
            for (table, k, _), exe in zip(entries, compile_all([job for _, _, job in entries], threads, tick)):
                table[k] = exe

    # --- one iteration ----------------------------------------------------------------------
    def _segment_batch(self, plan: IterationPlan, seg) -> tuple[RowBatch, dict[int, int], list[tuple[int, int]]]:
        builder = RowBatchBuilder(self.blocks, self.config.max_num_seqs, self.pages_per_seq, self.trash_row,
                                  from_embed=seg.layer_lo == 0)
        rows: dict[int, int] = {}
        if seg.decode and plan.decodes:
            # A decode's input token is still on the device if the iteration in flight sampled it.
            prev = np.asarray([self.slot_of[r.request_id] if r.num_pending else ON_HOST for r in plan.decodes],
                              np.int32)
            builder.add_decodes(plan.decodes, prev)
            rows.update((r.request_id, 1) for r in plan.decodes)
        if seg.prefill:
            for w in plan.segment_prefills(seg):
                builder.add_prefill(w.request, w.start, w.end, self.prefill_base + w.offset)
                rows[w.request.request_id] = rows.get(w.request.request_id, 0) + w.num_tokens
        row_tokens = builder.row_tokens() if self.record_rows else []
        return builder.build(bucket_for(len(builder), self.buckets)), rows, row_tokens

    def _pieces(self, seg, batch: RowBatch) -> list[tuple[int, int, RowBatch]]:
        """The calls of one segment: after the first piece every row reads its hidden row."""
        pieces = layer_pieces(seg.layer_lo, seg.layer_hi, self.model.num_layers)
        chained = dataclasses.replace(batch, from_embed_T=~batch.valid_T) if len(pieces) > 1 else batch
        return [(lo, n, batch if k == 0 else chained) for k, (lo, n) in enumerate(pieces)]

    def prepare(self, plan: IterationPlan) -> Prepared:
        """The host work of an iteration: its row batches and sampling arrays (numpy)."""
        calls = []
        for seg in plan.segments():
            batch, rows, row_tokens = self._segment_batch(plan, seg)
            calls.append((seg, self._pieces(seg, batch), rows, row_tokens))
        sampled: list[Request] = list(plan.decodes)
        hidden_rows = list(range(len(plan.decodes)))
        for w in plan.finishing():
            if w.completes_prompt:
                sampled.append(w.request)
                hidden_rows.append(self.prefill_base + w.offset + w.num_tokens - 1)
        return Prepared(calls, sampled, len(plan.decodes), self._sample_args(sampled, hidden_rows) if sampled else None)

    def launch(self, prep: Prepared) -> InFlight:
        """Enqueue a prepared iteration's layer-range calls and its sampling on the device;
        returns without waiting for them."""
        segments = []
        for seg, pieces, rows, row_tokens in prep.calls:
            counts = []
            for lo, n, batch in pieces:
                exe = self._step_exe[n, batch.tokens_T.shape[0]]
                self.hidden_RD, self.k_pool, self.v_pool, c = exe(*self.step_state(), batch,
                                                                  *self.first_layer_args(n, np.int32(lo)))
                counts.append(c)
            segments.append((seg, rows, counts, row_tokens))
        tokens = None
        if prep.sample_args is not None:
            greedy_only, *args = prep.sample_args
            self.sampled_S, tokens = self._sample_exe[args[0].shape[0], greedy_only](
                self.head, self.hidden_RD, self.sampled_S, *args)
        self.slot_of = {r.request_id: i for i, r in enumerate(prep.sampled)}
        return InFlight(segments, prep.sampled, prep.num_decodes, tokens)

    def dispatch(self, plan: IterationPlan) -> InFlight:
        """Prepare and launch one iteration. Decode requests with a token pending
        (num_pending > 0) must have had it sampled by the previous dispatch."""
        return self.launch(self.prepare(plan))

    def fetch(self, flight: InFlight) -> ExecutionResult:
        """Wait for a dispatched iteration; its tokens and expert counts come back in one transfer."""
        tokens, counts = jax.device_get((flight.tokens_B, [c for _, _, c, _ in flight.segments]))
        tokens = [] if tokens is None else tokens[:len(flight.sampled)].tolist()
        segments = []
        for (seg, rows, _, row_tokens), c in zip(flight.segments, counts):
            distinct_L, tiles_L = np.sum(c, axis=0, dtype=np.int32)  # pieces cover disjoint layers
            segments.append(SegmentRecord(seg.layer_lo, seg.layer_hi, rows, distinct_L, tiles_L, row_tokens))
        n_dec = flight.num_decodes
        first = {r.request_id: t for r, t in zip(flight.sampled[n_dec:], tokens[n_dec:])}
        return ExecutionResult(tokens[:n_dec], first, segments)

    def execute(self, plan: IterationPlan) -> ExecutionResult:
        """Dispatch and fetch one iteration (synchronous; for probes and benchmarks)."""
        return self.fetch(self.dispatch(plan))

    def _sample_args(self, requests: list[Request], hidden_rows: list[int]) -> tuple:
        """(greedy only, hidden rows, temperature, top_k, top_p, seed, step), each padded to a
        sampled-row bucket."""
        n = len(requests)
        pad = bucket_for(n, self.seq_buckets) - n

        def arr(values, dtype, fill=0):
            return np.concatenate([np.asarray(values, dtype), np.full(pad, fill, dtype)])

        p = [r.params for r in requests]
        temperature = arr([q.temperature for q in p], np.float32)
        # A request's n-th token is drawn with key fold_in(seed, n), counting tokens still in flight.
        return (not np.any(temperature > 0), arr(hidden_rows, np.int32), temperature,
                arr([q.top_k for q in p], np.int32), arr([q.top_p for q in p], np.float32, 1),
                arr([r.seed for r in requests], np.int32),
                arr([len(r.output) + r.num_pending for r in requests], np.int32))
