"""The decode-size MoE layer (<= DECODE_MAX_TOKENS tokens): every active expert computes every token.

    route (given) -> plan: the active experts in one list, each token's router weight per slot
    -> gate/up kernel: each tile reads all T tokens of x straight from the input (no row layout,
       no gather), + biases, activation in the epilogue
    -> down kernel (+ bias, x router weight in the epilogue; 0 for the slot's non-routed tokens)
    -> sum over slots.

Why: at decode sizes the two kernels stream the active experts' weights near the copy bandwidth,
and the layer's time beyond them is kernel launches (the grouped layer `moe.py` runs ~11 XLA ops
around its two kernels: plan, scatters of row sources and weights, the x gather, the combine
gather). Here the plan is a few fused compare-reductions, x goes to the kernel as it is, and the
combine is one reduction. The price: each active expert also multiplies the tokens not routed
to it (compute the weight stream hides at these sizes) and h / the per-slot outputs hold all
T_pad tokens per expert: extra bytes (F + D) * T_pad * 4 per active expert, against 6 * D * F
of its weights (Qwen3 at 64 tokens: 8 %; GPT-OSS: 3 %).

Opt-in until measured on the H200 (its kernels have only run in interpret mode): the engine
takes this path only with LP_JAX_MOE_DECODE_MAX_TOKENS=N set, for calls of up to N tokens
(`dispatch.moe_experts`); `bash scripts/decode_moe_gpu.sh OUT` is the GPU run that measures it.

Same contract as `moe_reference.moe_experts_reference`; shapes T tokens (T_pad: T rounded up to
16, 32 or 64), S = min(E, T * K) slots for active experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels import moe_tuning
from pallas_kernels.grouped_matmul import grouped_matmul

# The largest call the decode path takes (and the largest LP_JAX_MOE_DECODE_MAX_TOKENS). From the H200 results (2026-12-02): the grouped layer is
# 1.45x its bandwidth floor at 64 tokens (0.94x vLLM's fused_moe) and worse below, ~0.13 ms over
# the floor at 64 tokens, far more than the ~8 % extra bytes this path moves there.
DECODE_MAX_TOKENS = 64


def token_rows(T: int) -> int:
    """The token tile (wgmma's N) of a T-token call: 16, 32 or 64 (powers of two keep the TMA
    boxes and swizzles the grouped layer already runs with)."""
    if not 1 <= T <= DECODE_MAX_TOKENS:
        raise ValueError(f"the decode MoE path takes 1..{DECODE_MAX_TOKENS} tokens, got T={T}")
    return max(16, 1 << (T - 1).bit_length())


def decode_plan(weights_TK, ids_TK, num_experts: int, T_pad: int, valid_T=None):
    """Active experts and per-slot router weights: compare-reductions over [T, K, E] and one
    top_k over E (no prefix sum, no scatter: a few fused kernels).

    Returns dict(expert_S [S] int32: expert of slot s, ascending over the first num_active
    slots (the later ones hold inactive experts: no tile runs for them);
    num_active [1] int32; scale_M [S * T_pad] f32: router weight of token t at slot s (row
    s * T_pad + t), 0 where the token is not routed there, is padding, or valid_T is False).
    """
    T, K = ids_TK.shape
    E = num_experts
    S = min(E, T * K)
    hit_TKE = ids_TK.astype(jnp.int32)[:, :, None] == jnp.arange(E, dtype=jnp.int32)
    if valid_T is not None:
        hit_TKE = hit_TKE & valid_T[:, None, None]
    weight_TE = jnp.sum(jnp.where(hit_TKE, weights_TK.astype(jnp.float32)[:, :, None], 0.0), axis=1)
    active_E = jnp.any(hit_TKE, axis=(0, 1))
    # The active experts in ascending order are the top S of (E - e on active experts, 0 on the
    # others): one top_k (a sort) instead of a prefix sum and a compare-reduction after it.
    rank_E = jnp.where(active_E, E - jnp.arange(E, dtype=jnp.int32), 0)
    expert_S = jax.lax.top_k(rank_E, S)[1].astype(jnp.int32)
    scale_ST = jnp.take(weight_TE, expert_S, axis=1).T
    scale_M = jnp.pad(scale_ST, ((0, 0), (0, T_pad - T))).reshape(S * T_pad)
    num_active = jnp.sum(active_E, dtype=jnp.int32).reshape(1)
    return dict(expert_S=expert_S, num_active=num_active, scale_M=scale_M)


def moe_experts_decode(x_TD, weights_TK, ids_TK, experts: dict, *, activation: str = "swiglu",
                       alpha: float = 1.702, limit: float = 7.0, valid_T=None, layer=None,
                       config: moe_tuning.MoETileConfig | None = None, num_sms: int | None = None):
    """y[t] = sum_k weights[t, k] * expert_{ids[t, k]}(x[t]); [T, D] in x's dtype, T <= 64.

    layer, num_sms: as in `moe.moe_experts_pallas`. config: tiles of the two kernels, block_m =
    `token_rows(T)` (default `moe_tuning.decode_config`).
    """
    T, D = x_TD.shape
    K = ids_TK.shape[1]
    E, _, F = experts["w_gate"].shape[-3:]
    T_pad = token_rows(T)
    if layer is not None:
        experts = {name: w.reshape(-1, *w.shape[2:]) for name, w in experts.items()}
    if config is None:
        config = moe_tuning.decode_config(E, D, F, T * K, T_pad, jax.devices()[0].device_kind)
    if (config.gate_up.block_m, config.gate_up.swap) != (T_pad, True):
        raise ValueError(f"decode tiles need swap=True and block_m={T_pad} for T={T}, got {config.gate_up}")
    plan = decode_plan(weights_TK, ids_TK, E, T_pad, valid_T)
    S = plan["expert_S"].shape[0]
    tile_expert = plan["expert_S"] if layer is None else plan["expert_S"] + layer * E
    meta = (tile_expert, plan["num_active"])
    x_pad = x_TD if T == T_pad else jnp.pad(x_TD, ((0, T_pad - T), (0, 0)))

    has_bias = "b_gate" in experts
    h = grouped_matmul(
        x_pad, (experts["w_gate"], experts["w_up"]), *meta, config=config.gate_up,
        biases=(experts["b_gate"], experts["b_up"]) if has_bias else None,
        activation=activation, alpha=alpha, limit=limit, shared_rows=True,
        num_sms=num_sms)  # [F, S * T_pad]
    out = grouped_matmul(
        h, (experts["w_down"],), *meta, config=config.down,
        biases=(experts["b_down"],) if has_bias else None, row_scale=plan["scale_M"],
        x_transposed=True, num_sms=num_sms)  # [D, S * T_pad]
    # Slots past num_active were never written: select, not multiply, so their bytes cannot leak.
    live = (jnp.arange(S) < plan["num_active"][0])[None, :, None]
    y_DT = jnp.sum(jnp.where(live, out.reshape(D, S, T_pad).astype(jnp.float32), 0.0), axis=1)
    return y_DT[:, :T].T.astype(x_TD.dtype)
