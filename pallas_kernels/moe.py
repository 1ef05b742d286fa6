"""MoE expert layer on the Pallas Mosaic GPU grouped matmuls (the "pallas" backend).

    route (given) -> place the T*K assignments in a tile-padded, expert-sorted row layout
    -> gather x rows -> gate/up kernel (+ biases, activation in the epilogue)
    -> down kernel (+ bias, x router weight in the epilogue) -> gather each token's K rows, sum.

Same contract as `moe_reference.moe_experts_reference`. jit-compatible: every shape is static
(M_pad bounds the padded rows for any routing), routing-dependent sizes live in arrays. Rows of
padding tokens (valid_T False) go to no expert, so they cost no tile and no weight bytes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import moe_tuning
from pallas_kernels.grouped_matmul import grouped_matmul, plan_tiles, scatter_rows


def moe_experts_pallas(x_TD, weights_TK, ids_TK, experts: dict, *, activation: str = "swiglu",
                       alpha: float = 1.702, limit: float = 7.0, valid_T=None,
                       layer=None, config: moe_tuning.MoETileConfig | None = None,
                       num_sms: int | None = None):
    """y[t] = sum_k weights[t, k] * expert_{ids[t, k]}(x[t]); [T, D] in x's dtype.

    layer: None, or a (traced) layer index when every expert array is stacked over layers
        ([L, E, ...]): the stacks are viewed as [L * E, ...] (a free reshape) and the tiles'
        expert ids offset by layer * E, so the kernels read the layer's weights in place instead
        of XLA copying a slice of the stack out first.
    config: tile sizes of the two kernels (default: the tuned table for this shape and device).
    num_sms: persistent-grid size (default: the device's SM count).
    """
    T, D = x_TD.shape
    K = ids_TK.shape[1]
    E, _, F = experts["w_gate"].shape[-3:]
    if layer is not None:
        experts = {name: w.reshape(-1, *w.shape[2:]) for name, w in experts.items()}
    A = T * K
    if config is None:
        config = moe_tuning.lookup(E, D, F, A, jax.devices()[0].device_kind)
    swap = config.gate_up.swap

    expert_A = ids_TK.reshape(A).astype(jnp.int32)
    if valid_T is not None:
        expert_A = jnp.where(jnp.repeat(valid_T, K), expert_A, E)
    plan = plan_tiles(expert_A, E, config.gate_up.block_m)
    M_pad = plan["M_pad"]
    # Token of each padded row (padding rows read token 0: finite data, results unused) and its
    # router weight (0 on padding rows), applied in the down kernel's epilogue. Scattered, not
    # recomputed per element, so the row gather below is a plain copy.
    token_M = scatter_rows(plan["slot_A"], jnp.arange(A, dtype=jnp.int32) // K, M_pad)
    scale_M = scatter_rows(plan["slot_A"], weights_TK.reshape(A).astype(jnp.float32), M_pad)
    xs = x_TD[token_M]  # [M_pad, D]
    tile_expert = plan["tile_expert"] if layer is None else plan["tile_expert"] + layer * E
    meta = (tile_expert, plan["num_tiles"])

    has_bias = "b_gate" in experts
    h = grouped_matmul(
        xs, (experts["w_gate"], experts["w_up"]), *meta, config=config.gate_up,
        biases=(experts["b_gate"], experts["b_up"]) if has_bias else None,
        activation=activation, alpha=alpha, limit=limit, num_sms=num_sms)
    out = grouped_matmul(
        h, (experts["w_down"],), *meta, config=config.down,
        biases=(experts["b_down"],) if has_bias else None, row_scale=scale_M,
        x_transposed=swap, num_sms=num_sms)  # [M_pad, D], or [D, M_pad] if swap

    slot_TK = jnp.minimum(plan["slot_A"], M_pad - 1).reshape(T, K)
    rows = (out.T[slot_TK] if swap else out[slot_TK]).astype(jnp.float32)  # [T, K, D]
    keep = (plan["slot_A"] < M_pad).reshape(T, K, 1)
    y = jnp.sum(jnp.where(keep, rows, 0.0), axis=1)
    return y.astype(x_TD.dtype)
