"""Pure-jnp MoE expert computation: the oracle for the kernels and the path used off Hopper.

Rows are sorted by expert and run through `jax.lax.ragged_dot`, the same grouped structure the
kernels use, with f32 accumulation. Shapes: T token rows, D hidden, E experts, F expert hidden,
K experts per token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.activations import apply_activation


def sort_by_expert(ids_TK, num_experts: int, valid_T=None):
    """Order of the T*K (token, slot) assignments sorted by expert.

    Returns (order [T*K] int32 indices into the flattened assignments, group_sizes [E] int32).
    Assignments of invalid (padding) rows are sent past the last group, so no expert computes
    them and they cost no weight bytes.
    """
    T, K = ids_TK.shape
    flat = ids_TK.reshape(T * K).astype(jnp.int32)
    if valid_T is not None:
        flat = jnp.where(jnp.repeat(valid_T, K), flat, num_experts)
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    group_sizes = jnp.bincount(flat, length=num_experts + 1)[:num_experts].astype(jnp.int32)
    return order, group_sizes


def moe_experts_reference(x_TD, weights_TK, ids_TK, experts: dict, *, activation: str = "swiglu",
                          alpha: float = 1.702, limit: float = 7.0, valid_T=None, layer=None):
    """y[t] = sum_k weights[t, k] * expert_{ids[t, k]}(x[t]); rows with valid_T False give 0.

    experts: w_gate [E, D, F], w_up [E, D, F], w_down [E, F, D], optional b_gate [E, F],
    b_up [E, F], b_down [E, D]; or each stacked over layers ([L, E, ...]) with `layer` the
    (traced) layer to use. Returns [T, D] in x's dtype.
    """
    if layer is not None:
        experts = {name: w[layer] for name, w in experts.items()}
    T, D = x_TD.shape
    K = ids_TK.shape[1]
    E = experts["w_gate"].shape[0]
    order, group_sizes = sort_by_expert(ids_TK, E, valid_T)
    token_of = order // K
    xs = x_TD[token_of]  # [T*K, D], sorted by expert
    acc = jnp.float32
    gate = jax.lax.ragged_dot(xs, experts["w_gate"], group_sizes, preferred_element_type=acc)
    up = jax.lax.ragged_dot(xs, experts["w_up"], group_sizes, preferred_element_type=acc)
    expert_of = jnp.clip(ids_TK.reshape(T * K)[order], 0, E - 1)
    if "b_gate" in experts:
        gate = gate + experts["b_gate"][expert_of].astype(acc)
        up = up + experts["b_up"][expert_of].astype(acc)
    h = apply_activation(activation, gate, up, alpha, limit).astype(x_TD.dtype)
    out = jax.lax.ragged_dot(h, experts["w_down"], group_sizes, preferred_element_type=acc)
    if "b_down" in experts:
        out = out + experts["b_down"][expert_of].astype(acc)
    w = weights_TK.reshape(T * K)[order].astype(acc)
    if valid_T is not None:
        w = jnp.where(jnp.repeat(valid_T, K)[order], w, 0.0)
    y = jnp.zeros((T, D), acc).at[token_of].add(out * w[:, None])
    return y.astype(x_TD.dtype)


def random_experts(key, E: int, D: int, F: int, bias: bool, dtype=jnp.bfloat16) -> dict:
    """Random expert weights in `moe_experts`' layout (w_gate/w_up [E, D, F], w_down [E, F, D],
    biases [E, F] / [E, D] if asked), scaled 1/sqrt(fan_in): inputs for kernel tests and benches."""
    ks = jax.random.split(key, 6)
    ex = {"w_gate": jax.random.normal(ks[0], (E, D, F), dtype) / D**0.5,
          "w_up": jax.random.normal(ks[1], (E, D, F), dtype) / D**0.5,
          "w_down": jax.random.normal(ks[2], (E, F, D), dtype) / F**0.5}
    if bias:
        ex["b_gate"] = 0.5 * jax.random.normal(ks[3], (E, F), dtype)
        ex["b_up"] = 0.5 * jax.random.normal(ks[4], (E, F), dtype)
        ex["b_down"] = 0.5 * jax.random.normal(ks[5], (E, D), dtype)
    return ex
