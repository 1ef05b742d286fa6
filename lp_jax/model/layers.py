"""The pieces of a decoder layer as pure functions over one layer's weight dict.

Shapes: T token rows, D hidden, H query heads, N KV heads, A head dim, E experts, K experts
per token. Matmuls accumulate in f32; activations keep the weights' dtype between layers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lp_jax.model.config import ModelConfig
from lp_jax.model.routing import RowRouting
from pallas_kernels.dispatch import moe_experts


def rms_norm(x, weight, eps: float):
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (weight.astype(jnp.float32) * xf).astype(x.dtype)


# --- rotary position embedding -------------------------------------------------------------

@functools.cache
def rope_frequencies(config: ModelConfig) -> tuple[np.ndarray, float]:
    """(inverse frequencies [A/2] float32, attention scaling) as transformers computes them,
    including YaRN (GPT-OSS)."""
    dim, base = config.head_dim, config.rope_theta
    pos_freqs = np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    inv_freq = (1.0 / pos_freqs).astype(np.float32)
    y = config.rope_scaling
    if y is None:
        return inv_freq, 1.0
    attention_factor = 0.1 * math.log(y.factor) + 1.0 if y.factor > 1 else 1.0

    def correction_dim(rotations):
        return (dim * math.log(y.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
            2 * math.log(base))

    low, high = correction_dim(y.beta_fast), correction_dim(y.beta_slow)
    if y.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = (1 - ramp).astype(np.float32)
    interpolation = (1.0 / (np.float32(y.factor) * pos_freqs)).astype(np.float32)
    inv_freq = interpolation * (1 - extrapolation) + inv_freq * extrapolation
    return inv_freq.astype(np.float32), attention_factor


def apply_rope(x_THA, positions_T, config: ModelConfig):
    """Rotate the two halves of each head (transformers' rotate_half convention)."""
    inv_freq, scaling = rope_frequencies(config)
    freqs = positions_T.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
    cos = (jnp.cos(freqs) * scaling).astype(x_THA.dtype)[:, None, :]
    sin = (jnp.sin(freqs) * scaling).astype(x_THA.dtype)[:, None, :]
    x1, x2 = jnp.split(x_THA, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


# --- attention projections -----------------------------------------------------------------

def _proj(x, w, b=None):
    y = jnp.einsum("td,d...->t...", x, w, preferred_element_type=jnp.float32)
    if b is not None:
        y = y + b.astype(jnp.float32)
    return y.astype(x.dtype)


def qkv(config: ModelConfig, lp: dict, h_TD, positions_T):
    """Queries [T, H, A], keys and values [T, N, A], with q/k norms and RoPE applied."""
    q = _proj(h_TD, lp["wq"], lp.get("bq"))
    k = _proj(h_TD, lp["wk"], lp.get("bk"))
    v = _proj(h_TD, lp["wv"], lp.get("bv"))
    if config.qk_norm:
        q = rms_norm(q, lp["q_norm"], config.rms_norm_eps)
        k = rms_norm(k, lp["k_norm"], config.rms_norm_eps)
    return apply_rope(q, positions_T, config), apply_rope(k, positions_T, config), v


def attention_out(lp: dict, o_THA):
    y = jnp.einsum("tha,had->td", o_THA, lp["wo"], preferred_element_type=jnp.float32)
    if "bo" in lp:
        y = y + lp["bo"].astype(jnp.float32)
    return y.astype(o_THA.dtype)


# --- feed-forward ----------------------------------------------------------------------------

def router_logits(lp: dict, h_TD):
    """Router logits [T, E] f32."""
    logits = jnp.einsum("td,de->te", h_TD, lp["router"], preferred_element_type=jnp.float32)
    if "router_bias" in lp:
        logits = logits + lp["router_bias"].astype(jnp.float32)
    return logits


def gate_weights(config: ModelConfig, logits_TE, ids_TK):
    """Weights [T, K] f32 of the experts ids_TK as the model's router weights its own choice:
    Qwen3-MoE a softmax over all E logits, gathered (renormalised over the K if norm_topk_prob);
    GPT-OSS a softmax over the K chosen logits."""
    if config.router == "softmax_topk":
        weights = jnp.take_along_axis(jax.nn.softmax(logits_TE, axis=-1), ids_TK, axis=-1)
        if config.norm_topk_prob:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        return weights
    return jax.nn.softmax(jnp.take_along_axis(logits_TE, ids_TK, axis=-1), axis=-1)


def route(config: ModelConfig, lp: dict, h_TD, routing: RowRouting | None = None):
    """Router: (weights [T, K] f32, expert ids [T, K] int32). The router's logits are computed
    either way; `routing` (a calibrated profile's rows) chooses the ids instead of their top-k,
    and the chosen experts are weighted from the logits as the router weights its own."""
    logits = router_logits(lp, h_TD)
    K = config.num_experts_per_tok
    if routing is not None:
        ids = routing.ids(K)
        return gate_weights(config, logits, ids), ids
    if config.router == "softmax_topk":  # Qwen3-MoE
        weights, ids = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), K)
        if config.norm_topk_prob:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    else:  # GPT-OSS: top-k of the logits, softmax over those
        top, ids = jax.lax.top_k(logits, K)
        weights = jax.nn.softmax(top, axis=-1)
    return weights, ids.astype(jnp.int32)


def expert_rows(ids_TK, num_experts: int, valid_T=None):
    """Rows each expert receives [E] int32 (a token counts once per expert it chose; rows with
    valid_T False count for none)."""
    hit = jnp.ones(ids_TK.shape, jnp.int32)
    if valid_T is not None:
        hit = hit * valid_T[:, None].astype(jnp.int32)
    return jnp.zeros((num_experts,), jnp.int32).at[ids_TK.reshape(-1)].add(hit.reshape(-1))


def expert_traffic(ids_TK, num_experts: int, block_m: int, valid_T=None):
    """(distinct experts that received a row, row tiles sum_e ceil(rows_e / block_m)): int32
    scalars; weight bytes are these times the bytes of one expert."""
    rows_E = expert_rows(ids_TK, num_experts, valid_T)
    return jnp.sum(rows_E > 0).astype(jnp.int32), jnp.sum((rows_E + block_m - 1) // block_m).astype(jnp.int32)


EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down", "b_gate", "b_up", "b_down")


def feed_forward(config: ModelConfig, lp: dict, h_TD, valid_T=None, backend: str | None = None,
                 expert_layer=None, routing: RowRouting | None = None, experts_fn=moe_experts):
    """(output [T, D], routing ids [T, K] or None for dense models).

    expert_layer: None, or a (traced) layer index when lp's expert weights (EXPERT_WEIGHTS of
    an MoE layer) are the whole [L, E, ...] stacks, which the kernels then index in place.
    routing: see `route` (None: the router's own top-k).
    experts_fn: what computes the routed experts, with `moe_experts`' signature (the engine
    passes the per-shard version under tensor / expert parallelism).
    """
    if not config.is_moe:
        gate = jnp.einsum("td,df->tf", h_TD, lp["w_gate"], preferred_element_type=jnp.float32)
        up = jnp.einsum("td,df->tf", h_TD, lp["w_up"], preferred_element_type=jnp.float32)
        act = (jax.nn.silu(gate) * up).astype(h_TD.dtype)
        y = jnp.einsum("tf,fd->td", act, lp["w_down"], preferred_element_type=jnp.float32)
        return y.astype(h_TD.dtype), None
    weights, ids = route(config, lp, h_TD, routing)
    experts = {k: lp[k] for k in EXPERT_WEIGHTS if k in lp}
    y = experts_fn(h_TD, weights, ids, experts, activation=config.activation,
                   alpha=config.swiglu_alpha, limit=config.swiglu_limit, valid_T=valid_T,
                   layer=expert_layer, backend=backend)
    return y, ids
