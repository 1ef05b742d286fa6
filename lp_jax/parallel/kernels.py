"""The kernels per shard: paged attention over each device's heads and the MoE over each
device's experts (and slice of every expert's hidden dim), under `jax.shard_map`.

Inside the map each device calls the same `pallas_kernels.dispatch` entry points on its local
arrays: the Pallas kernels on Hopper, the jnp references elsewhere (the CPU tests run those, so
the wrapping itself is what they check). Attention needs no communication (a query head reads
only its own KV head); its output projection is head-sharded, so XLA all-reduces after it. The
MoE's partial sums (a device's experts, a device's slice of F) are summed by one psum, which
XLA lowers to an all-reduce over both mesh axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from lp_jax.model.config import ModelConfig
from lp_jax.model.spec import layer_spec
from lp_jax.parallel.layout import EXPERT, POOL_AXES, TENSOR, Layout
from pallas_kernels.dispatch import moe_experts, paged_attention

REPLICATED = PartitionSpec()


def _split_static(plan: dict | None) -> tuple[dict, dict]:
    """(array entries, static entries) of an attention plan: only arrays cross the map."""
    if plan is None:
        return {}, {}
    arrays = {k: v for k, v in plan.items() if isinstance(v, jax.Array)}
    return arrays, {k: v for k, v in plan.items() if k not in arrays}


def write_and_attend(q_THA, k_TNA, v_TNA, k_pool, v_pool, layer, page_T, offset_T, block_tables_BM, seq_T, pos_T,
                     *, window, sinks_H=None, backend=None, plan=None, window_index=0):
    """Write this call's K/V into the layer's pages, then paged attention over them (see
    `dispatch.paged_attention`). Returns (o [T, H, A], K pool, V pool)."""
    k_pool = k_pool.at[layer, page_T, offset_T].set(k_TNA.astype(k_pool.dtype))
    v_pool = v_pool.at[layer, page_T, offset_T].set(v_TNA.astype(v_pool.dtype))
    o = paged_attention(q_THA, k_pool, v_pool, layer, block_tables_BM, seq_T, pos_T, window=window, sinks_H=sinks_H,
                        backend=backend, plan=plan, window_index=window_index)
    return o, k_pool, v_pool


def sharded_write_and_attend(layout: Layout, q_THA, k_TNA, v_TNA, k_pool, v_pool, layer, page_T, offset_T,
                             block_tables_BM, seq_T, pos_T, *, window, sinks_H=None, backend=None, plan=None,
                             window_index=0):
    """`write_and_attend` with heads, KV heads, the pools and the sinks split over `tensor`.
    plan: made for the local head counts (H / tp, N / tp); window_index an int or [L] int32."""
    if not layout.sharded:
        return write_and_attend(q_THA, k_TNA, v_TNA, k_pool, v_pool, layer, page_T, offset_T, block_tables_BM, seq_T,
                                pos_T, window=window, sinks_H=sinks_H, backend=backend, plan=plan,
                                window_index=window_index)
    heads = layout.spec((None, "heads", None))
    kv = layout.spec((None, "kv_heads", None))
    pool = layout.spec(POOL_AXES)
    plan_arrays, plan_static = _split_static(plan)
    index_arrays = {} if isinstance(window_index, int) else {"i": window_index}
    sinks = {} if sinks_H is None else {"s": sinks_H}
    sinks_spec = {k: layout.spec((None,) * (v.ndim - 1) + ("heads",)) for k, v in sinks.items()}

    def local(q, k, v, kp, vp, layer, page, offset, tables, seq, pos, window, plan_arrays, index_arrays, sinks):
        return write_and_attend(q, k, v, kp, vp, layer, page, offset, tables, seq, pos, window=window,
                                sinks_H=sinks.get("s"), backend=backend,
                                plan=dict(plan_arrays, **plan_static) if plan is not None else None,
                                window_index=index_arrays.get("i", window_index))

    replicated = {k: REPLICATED for k in plan_arrays}
    fn = jax.shard_map(local, mesh=layout.mesh, check_vma=False,
                       in_specs=(heads, kv, kv, pool, pool) + (REPLICATED,) * 7
                       + (replicated, {k: REPLICATED for k in index_arrays}, sinks_spec),
                       out_specs=(heads, pool, pool))
    return fn(q_THA, k_TNA, v_TNA, k_pool, v_pool, layer, page_T, offset_T, block_tables_BM, seq_T, pos_T, window,
              plan_arrays, index_arrays, sinks)


def sharded_moe_experts(layout: Layout, model: ModelConfig, x_TD, weights_TK, ids_TK, experts: dict, *, layer=None, valid_T=None,
                        **options):
    """`dispatch.moe_experts` with the experts split over `expert` and each expert's hidden dim
    over `tensor`; x, the routing and the result [T, D] replicated. options: activation, alpha,
    limit, backend."""
    if not layout.sharded:
        return moe_experts(x_TD, weights_TK, ids_TK, experts, layer=layer, valid_T=valid_T, **options)
    lead = () if layer is None else (None,)  # the layer axis of [L, E, ...] stacks
    declared = layer_spec(model)
    specs = {name: layout.spec(lead + declared[name].axes) for name in experts}
    valid = {} if valid_T is None else {"v": valid_T}

    def local(x, w, ids, experts, layer, valid):
        E_local = experts["w_gate"].shape[-3]
        first = jax.lax.axis_index(EXPERT) * E_local if layout.ep > 1 else 0
        mine = (ids >= first) & (ids < first + E_local)
        # Assignments to another device's experts go to no expert here (id E_local, weight 0).
        ids = jnp.where(mine, ids - first, E_local)
        w = jnp.where(mine, w, 0.0)
        if "b_down" in experts and layout.tp > 1:
            # The output bias is whole on every tensor shard: only one of them adds it to the sum.
            experts = dict(experts, b_down=jnp.where(jax.lax.axis_index(TENSOR) == 0, experts["b_down"], 0))
        y = moe_experts(x, w, ids, experts, layer=layer, valid_T=valid.get("v"), **options)
        return jax.lax.psum(y, tuple(a for a, n in ((EXPERT, layout.ep), (TENSOR, layout.tp)) if n > 1))

    fn = jax.shard_map(local, mesh=layout.mesh, check_vma=False,
                       in_specs=(REPLICATED, REPLICATED, REPLICATED, specs, REPLICATED,
                                 {k: REPLICATED for k in valid}),
                       out_specs=REPLICATED)
    return fn(x_TD, weights_TK, ids_TK, experts, layer, valid)

