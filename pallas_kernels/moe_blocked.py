"""Pure-jnp MoE expert computation in row blocks of one expert each: the fast exact path for training.

`jax.lax.ragged_dot`, which the reference (`moe_reference.py`) uses, has no grouped lowering on
the CPU, and XLA's GPU rewrite falls back to the same thing for the weight gradient: each
ragged matmul becomes a dense one over every expert with the other experts' rows masked to zero,
E times the arithmetic (16x for E = 16). Here the assignments, sorted by expert, are laid out so
that each expert's rows start a fresh block of `block_m` rows (its last block zero-padded); every
block then belongs to one expert, and one batched matmul of the blocks against their experts'
gathered weights computes them all: about (T*K + E*block_m) rows of work instead of E*T*K. Same
maths as the reference, other summation order (agrees to f32 rounding); differentiable by JAX
(gathers, a scatter and batched matmuls). Shapes: T token rows, D hidden, E experts, F expert
hidden, K experts per token, R padded rows, N blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.activations import apply_activation
from pallas_kernels.moe_reference import sort_by_expert

DEFAULT_BLOCK_M = 32


def block_layout(ids_TK, num_experts: int, block_m: int, valid_T=None):
    """Where each sorted assignment sits in the block-padded layout.

    Returns (order [T*K] as `sort_by_expert`, row_of [T*K] int32: padded row of the i-th sorted
    assignment (R, one past the end, for invalid rows), block_expert [N] int32: the expert of each
    block (blocks past the last used one are given expert 0 and hold only zero rows)), with the
    static bounds R = N * block_m >= T*K + E*(block_m - 1).
    """
    T, K = ids_TK.shape
    order, sizes_E = sort_by_expert(ids_TK, num_experts, valid_T)
    num_blocks = -(-(T * K + num_experts * (block_m - 1)) // block_m)
    padded_E = (sizes_E + block_m - 1) // block_m * block_m
    start_E = jnp.cumsum(sizes_E) - sizes_E
    padded_start_E = jnp.cumsum(padded_E) - padded_E
    flat = ids_TK.reshape(T * K).astype(jnp.int32)
    if valid_T is not None:
        flat = jnp.where(jnp.repeat(valid_T, K), flat, num_experts)
    expert_i = flat[order]
    e = jnp.clip(expert_i, 0, num_experts - 1)
    rank_i = jnp.arange(T * K, dtype=jnp.int32) - start_E[e]
    row_of = jnp.where(expert_i < num_experts, padded_start_E[e] + rank_i, num_blocks * block_m)
    padded_end_E = jnp.cumsum(padded_E)
    block_start_N = jnp.arange(num_blocks, dtype=jnp.int32) * block_m
    block_expert = jnp.searchsorted(padded_end_E, block_start_N, side="right").astype(jnp.int32)
    block_expert = jnp.where(block_expert < num_experts, block_expert, 0)
    return order, row_of.astype(jnp.int32), block_expert


def moe_experts_blocked(x_TD, weights_TK, ids_TK, experts: dict, *, activation: str = "swiglu",
                        alpha: float = 1.702, limit: float = 7.0, valid_T=None, layer=None, backend=None,
                        block_m: int = DEFAULT_BLOCK_M):
    """y[t] = sum_k weights[t, k] * expert_{ids[t, k]}(x[t]), as `moe_experts_reference` (same
    arguments, experts optionally layer-stacked with `layer`); rows with valid_T False give 0.
    `backend` is accepted for `dispatch.moe_experts`' signature and ignored (this path is pure jnp).
    Returns [T, D] in x's dtype."""
    del backend
    if block_m < 1:
        raise ValueError(f"block_m must be >= 1, got {block_m}")
    if layer is not None:
        experts = {name: w[layer] for name, w in experts.items()}
    T, D = x_TD.shape
    K = ids_TK.shape[1]
    E = experts["w_gate"].shape[0]
    order, row_of, block_expert_N = block_layout(ids_TK, E, block_m, valid_T)
    N = block_expert_N.shape[0]
    token_of = order // K
    acc = jnp.float32
    xs_RD = jnp.zeros((N * block_m, D), x_TD.dtype).at[row_of].set(x_TD[token_of], mode="drop")
    xs_NMD = xs_RD.reshape(N, block_m, D)

    def blocks_matmul(a_NMX, w_EXY):
        return jnp.einsum("nmx,nxy->nmy", a_NMX, w_EXY[block_expert_N], preferred_element_type=acc)

    gate = blocks_matmul(xs_NMD, experts["w_gate"])
    up = blocks_matmul(xs_NMD, experts["w_up"])
    if "b_gate" in experts:
        gate = gate + experts["b_gate"][block_expert_N][:, None, :].astype(acc)
        up = up + experts["b_up"][block_expert_N][:, None, :].astype(acc)
    h = apply_activation(activation, gate, up, alpha, limit).astype(x_TD.dtype)
    out_NMD = blocks_matmul(h, experts["w_down"])
    if "b_down" in experts:
        out_NMD = out_NMD + experts["b_down"][block_expert_N][:, None, :].astype(acc)
    out = out_NMD.reshape(N * block_m, D).at[row_of].get(mode="fill", fill_value=0)  # [T*K, D], sorted order
    w = weights_TK.reshape(T * K)[order].astype(acc)
    if valid_T is not None:
        w = jnp.where(jnp.repeat(valid_T, K)[order], w, 0.0)
    y = jnp.zeros((T, D), acc).at[token_of].add(out * w[:, None])
    return y.astype(x_TD.dtype)
