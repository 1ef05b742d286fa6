"""The only part of the engine that knows JAX shapes: it turns an IterationPlan into calls of
compiled step functions and returns the sampled tokens.

- Weights are stacked over layers ([L, ...] per weight) and one step function runs any
  contiguous layer range [layer_lo, layer_hi) with a loop over traced layer indices, so one
  compiled executable per row bucket serves every group size and every schedule; its argument
  count does not grow with the number of layers.
- KV pools ([L, P, Z, N, A]) and the hidden-state buffer are donated into every call.
- The hidden buffer keeps the hidden states of a layered cohort on the device between
  iterations (rows [max_num_seqs, max_num_seqs + max_prefill_rows)); decode rows use rows
  [0, max_num_seqs) within an iteration; the last row is the padding rows' trash.
- Every executable (each row bucket; each sampled-row bucket, greedy or not) is compiled at
  start-up; `compile_counter` checks that serving compiles nothing more.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from lp_jax.batch import RowBatch, RowBatchBuilder
from lp_jax.config import ModelConfig
from lp_jax.engine_config import EngineConfig, bucket_for
from lp_jax.kv_cache import BlockManager, allocate_pools
from lp_jax.model.forward import decoder_layer, unembed
from lp_jax.model.layers import EXPERT_WEIGHTS, distinct_experts
from lp_jax.request import Request
from lp_jax.sampling import greedy, sample
from lp_jax.scheduler.base import IterationPlan
from pallas_kernels.attention_reference import FULL_WINDOW
from pallas_kernels.dispatch import paged_attention


# The compile cache: executables keyed by everything that determines them (model, backend,
# options and the abstract shapes of every argument), shared by all engines of this process.
# compile_counter counts what it compiles.
_EXECUTABLES: dict[tuple, object] = {}


def _compiled(kind: tuple, jitted, *abstract_args):
    """The executable of `jitted` for these abstract arguments, compiled once per process."""
    leaves, tree = jax.tree.flatten(abstract_args)
    key = kind + (tree, tuple((leaf.shape, str(leaf.dtype)) if hasattr(leaf, "shape") else leaf for leaf in leaves))
    if key not in _EXECUTABLES:
        _EXECUTABLES[key] = jitted.lower(*abstract_args).compile()
    return _EXECUTABLES[key]


def stack_layers(layers: list[dict] | dict) -> dict:
    """[L] per-layer dicts -> one dict of [L, ...] arrays (an already stacked dict is returned)."""
    if isinstance(layers, dict):
        return layers
    return {name: jnp.stack([lp[name] for lp in layers]) for name in layers[0]}


def run_layers(model: ModelConfig, backend, stacked, embed_VD, windows_L, hidden_RD, k_pool, v_pool,
               batch: RowBatch, layer_lo, layer_hi):
    """Run the batch's rows through layers [layer_lo, layer_hi) (traced bounds).

    Returns (hidden buffer with the rows' outputs written, K pool, V pool,
    distinct experts per layer [L] int32 (0 outside the range)).
    """
    x = jnp.where(batch.from_embed_T[:, None], embed_VD[batch.tokens_T], hidden_RD[batch.src_T])
    counts = jnp.zeros((model.num_layers,), jnp.int32)

    def body(layer, carry):
        x, k_pool, v_pool, counts = carry
        # Expert stacks go whole to the MoE kernels, which index the layer in place (slicing them
        # here would copy every layer's experts); the rest is sliced.
        in_place = EXPERT_WEIGHTS if model.is_moe else ()
        lp = {name: w if name in in_place else w[layer] for name, w in stacked.items()}
        pools = {}

        def attend(q, k, v):
            # Write this call's K/V first; attention then reads only pages.
            kp = k_pool.at[layer, batch.page_T, batch.offset_T].set(k.astype(k_pool.dtype))
            vp = v_pool.at[layer, batch.page_T, batch.offset_T].set(v.astype(v_pool.dtype))
            pools.update(k=kp, v=vp)
            return paged_attention(q, kp, vp, layer, batch.block_tables_BM, batch.seq_T, batch.pos_T,
                                   window=windows_L[layer], sinks_H=lp.get("sinks"), backend=backend)

        x, ids = decoder_layer(model, lp, x, batch.pos_T, attend, batch.valid_T, backend,
                               layer if model.is_moe else None)
        if ids is not None:
            counts = counts.at[layer].set(distinct_experts(ids, model.num_experts, batch.valid_T))
        return x, pools["k"], pools["v"], counts

    x, k_pool, v_pool, counts = jax.lax.fori_loop(layer_lo, layer_hi, body, (x, k_pool, v_pool, counts))
    return hidden_RD.at[batch.dst_T].set(x), k_pool, v_pool, counts


def head_and_sample(model: ModelConfig, greedy_only: bool, head, hidden_RD, rows_B, temperature_B, top_k_B,
                    top_p_B, seed_B, step_B):
    """Final norm, LM head and sampling of the hidden rows `rows_B`: token ids [B] int32."""
    logits = unembed(model, head, hidden_RD[rows_B])
    if greedy_only:
        return greedy(logits)
    return sample(logits, temperature_B, top_k_B, top_p_B, seed_B, step_B)


@dataclass
class SegmentRecord:
    """What one layer-range call did, for expert-traffic accounting and tests."""

    layer_lo: int
    layer_hi: int
    rows_per_request: dict[int, int]
    expert_counts_L: np.ndarray  # distinct experts per layer (0 outside the range)
    row_tokens: list[tuple[int, int]] = field(default_factory=list)  # (request id, position) per row, when recorded


@dataclass
class ExecutionResult:
    decode_tokens: list[int]
    prefill_tokens: dict[int, int]  # request id -> first token, for prefills completing their prompt
    segments: list[SegmentRecord]


class ModelExecutor:
    """Owns the device state (weights, KV pools, hidden buffer) and the compiled executables."""

    def __init__(self, model: ModelConfig, config: EngineConfig, params: dict, blocks: BlockManager,
                 dtype, backend: str | None = None, record_rows: bool = False):
        self.model, self.config, self.blocks = model, config, blocks
        self.dtype = jnp.dtype(dtype)
        self.record_rows = record_rows
        cast = functools.partial(jax.tree.map, lambda w: jnp.asarray(w, self.dtype))
        self.stacked = cast(stack_layers(params["layers"]))
        self.head = cast({k: params[k] for k in ("embed", "final_norm", "lm_head") if k in params})
        self.windows_L = jnp.asarray([model.layer_window(i) or FULL_WINDOW for i in range(model.num_layers)],
                                     jnp.int32)
        self.k_pool, self.v_pool = allocate_pools(model, blocks.num_pages, blocks.page_size, self.dtype)
        self.prefill_base = config.max_num_seqs
        num_rows = config.hidden_rows()
        self.trash_row = num_rows - 1
        self.hidden_RD = jnp.zeros((num_rows, model.hidden_size), self.dtype)
        self.pages_per_seq = config.pages_per_seq(model)
        self.buckets = config.buckets()
        self.seq_buckets = config.seq_buckets()
        self._layers_fn = jax.jit(functools.partial(run_layers, model, backend), donate_argnums=(3, 4, 5))
        self._sample_fn = jax.jit(functools.partial(head_and_sample, model), static_argnums=(0,))
        self._kind = (model, backend)
        self._layers_exe: dict[int, object] = {}
        self._sample_exe: dict[tuple[int, bool], object] = {}

    # --- compilation ------------------------------------------------------------------------
    def _batch_struct(self, T: int) -> RowBatch:
        i32, b = jax.ShapeDtypeStruct((T,), jnp.int32), jax.ShapeDtypeStruct((T,), jnp.bool_)
        tables = jax.ShapeDtypeStruct((self.config.max_num_seqs + 1, self.pages_per_seq), jnp.int32)
        return RowBatch(tokens_T=i32, from_embed_T=b, src_T=i32, dst_T=i32, pos_T=i32, seq_T=i32, page_T=i32,
                        offset_T=i32, valid_T=b, block_tables_BM=tables)

    def precompile(self, progress=None) -> None:
        """Compile every executable serving can need; `progress(done, total)` is told as it goes."""
        shape = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
        scalar = jax.ShapeDtypeStruct((), jnp.int32)
        total = len(self.buckets) + 2 * len(self.seq_buckets)
        done = 0
        for T in self.buckets:
            self._layers_exe[T] = _compiled(
                ("layers",) + self._kind, self._layers_fn, jax.tree.map(shape, self.stacked),
                shape(self.head["embed"]), shape(self.windows_L), shape(self.hidden_RD), shape(self.k_pool),
                shape(self.v_pool), self._batch_struct(T), scalar, scalar)
            done += 1
            if progress:
                progress(done, total)
        for B in self.seq_buckets:
            i32, f32 = jax.ShapeDtypeStruct((B,), jnp.int32), jax.ShapeDtypeStruct((B,), jnp.float32)
            for greedy_only in (True, False):
                self._sample_exe[B, greedy_only] = _compiled(
                    ("sample",) + self._kind, self._sample_fn, greedy_only, jax.tree.map(shape, self.head),
                    shape(self.hidden_RD), i32, f32, i32, f32, i32, i32)
                done += 1
                if progress:
                    progress(done, total)

    # --- one iteration ----------------------------------------------------------------------
    def _segment_batch(self, plan: IterationPlan, seg) -> tuple[RowBatch, dict[int, int], list[tuple[int, int]]]:
        builder = RowBatchBuilder(self.blocks, self.config.max_num_seqs, self.pages_per_seq, self.trash_row)
        from_embed = seg.layer_lo == 0
        rows: dict[int, int] = {}
        if seg.decode:
            for i, r in enumerate(plan.decodes):
                builder.add(r, range(r.num_computed, r.num_computed + 1), i, from_embed)
                rows[r.request_id] = 1
        if seg.prefill:
            for w in plan.prefills:
                builder.add(w.request, range(w.start, w.end), self.prefill_base + w.offset, from_embed)
                rows[w.request.request_id] = rows.get(w.request.request_id, 0) + w.num_tokens
        row_tokens = builder.row_tokens() if self.record_rows else []
        return builder.build(bucket_for(len(builder), self.buckets)), rows, row_tokens

    def execute(self, plan: IterationPlan) -> ExecutionResult:
        pending = []
        for seg in plan.segments():
            batch, rows, row_tokens = self._segment_batch(plan, seg)
            exe = self._layers_exe[batch.tokens_T.shape[0]]
            self.hidden_RD, self.k_pool, self.v_pool, counts = exe(
                self.stacked, self.head["embed"], self.windows_L, self.hidden_RD, self.k_pool, self.v_pool,
                batch, np.int32(seg.layer_lo), np.int32(seg.layer_hi))
            pending.append((seg, rows, counts, row_tokens))

        sampled: list[Request] = list(plan.decodes)
        hidden_rows = list(range(len(plan.decodes)))
        if plan.prefill_finishes_layers:
            for w in plan.prefills:
                if w.completes_prompt:
                    sampled.append(w.request)
                    hidden_rows.append(self.prefill_base + w.offset + w.num_tokens - 1)
        tokens = self._sample(sampled, hidden_rows) if sampled else np.zeros(0, np.int32)

        segments = [SegmentRecord(seg.layer_lo, seg.layer_hi, rows, np.asarray(counts), row_tokens)
                    for seg, rows, counts, row_tokens in pending]
        n_dec = len(plan.decodes)
        return ExecutionResult([int(t) for t in tokens[:n_dec]],
                               {r.request_id: int(t) for r, t in zip(sampled[n_dec:], tokens[n_dec:])}, segments)

    def _sample(self, requests: list[Request], hidden_rows: list[int]) -> np.ndarray:
        n = len(requests)
        B = bucket_for(n, self.seq_buckets)
        pad = B - n

        def arr(values, dtype, fill=0):
            return np.concatenate([np.asarray(values, dtype), np.full(pad, fill, dtype)])

        p = [r.params for r in requests]
        temperature = arr([q.temperature for q in p], np.float32)
        greedy_only = not np.any(temperature > 0)
        tokens = self._sample_exe[B, greedy_only](
            self.head, self.hidden_RD, arr(hidden_rows, np.int32), temperature, arr([q.top_k for q in p], np.int32),
            arr([q.top_p for q in p], np.float32, 1), arr([r.seed for r in requests], np.int32),
            arr([len(r.output) for r in requests], np.int32))
        return np.asarray(tokens)[:n]
