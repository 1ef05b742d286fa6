"""The decoder layer and the reference full-sequence forward (no paging): the oracle of the engine.

`decoder_layer` takes the attention as a function, so the same layer code runs over a contiguous
sequence here and over paged K/V in the engine (`lp_jax.engine.executor`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lp_jax.model.config import ModelConfig
from lp_jax.model.layers import attention_out, feed_forward, qkv, rms_norm
from lp_jax.model.routing import RoutingProfile, RowRouting, log_popularity
from pallas_kernels.attention_reference import FULL_WINDOW, dense_attention
from pallas_kernels.dispatch import moe_experts

# attend(q [T, H, A], k [T, N, A], v [T, N, A]) -> [T, H, A]
Attend = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def decoder_layer(config: ModelConfig, lp: dict, x_TD, positions_T, attend: Attend, valid_T=None,
                  backend: str | None = None, expert_layer=None, routing: RowRouting | None = None,
                  experts_fn=moe_experts):
    """Pre-norm attention block then pre-norm feed-forward block, both residual.

    expert_layer, experts_fn: see `feed_forward` (expert weights passed as whole layer stacks;
    the routed experts' implementation).
    routing: see `route` (None: the router's own top-k).
    Returns (x [T, D], routing ids [T, K] or None).
    """
    h = rms_norm(x_TD, lp["input_norm"], config.rms_norm_eps)
    q, k, v = qkv(config, lp, h, positions_T)
    x_TD = x_TD + attention_out(lp, attend(q, k, v))
    h = rms_norm(x_TD, lp["post_norm"], config.rms_norm_eps)
    y, ids = feed_forward(config, lp, h, valid_T, backend, expert_layer, routing, experts_fn)
    return x_TD + y, ids


def embed(params: dict, tokens_T):
    return params["embed"][tokens_T]


def unembed(config: ModelConfig, params: dict, x_TD):
    """Final norm and LM head: logits [T, V] in f32."""
    h = rms_norm(x_TD, params["final_norm"], config.rms_norm_eps)
    w = params["embed"].T if config.tie_word_embeddings else params["lm_head"]
    return jnp.einsum("td,dv->tv", h, w, preferred_element_type=jnp.float32)


def batch_forward(config: ModelConfig, params: dict, tokens_BS, backend: str | None = None,
                  routing: RoutingProfile | None = None, routing_seeds_B=None, experts_fn=moe_experts):
    """Logits [B, S, V] f32 of B whole sequences of S tokens each (no paging), and the routing ids
    of every layer (list of [B*S, K] int32, rows in batch-major order; empty for dense models).

    The B*S rows go through each layer as one ragged batch (so the expert computation sees all of
    them at once, as the engine's does); attention is causal within each sequence only. Training
    (scripts/train_tiny_moe.py) differentiates this function. routing: a routing profile (None or
    "uniform": the router's own top-k), sequence b routed with seed routing_seeds_B[b] (default 0).
    experts_fn: the routed experts' implementation (`decoder_layer`); training passes the blocked
    path (`pallas_kernels.moe_blocked`), which computes the same as the default's reference.
    """
    tokens_BS = jnp.asarray(tokens_BS, jnp.int32)
    B, S = tokens_BS.shape
    positions_S = jnp.arange(S, dtype=jnp.int32)
    positions_T = jnp.tile(positions_S, B)
    x = embed(params, tokens_BS.reshape(B * S))
    calibrated = routing is not None and not routing.uses_router and config.is_moe
    if calibrated:
        log_pop_LE = log_popularity(routing, config.num_experts, config.num_layers)
        seeds_B = jnp.zeros((B,), jnp.int32) if routing_seeds_B is None else jnp.asarray(routing_seeds_B, jnp.int32)
        seed_T = jnp.repeat(seeds_B, S)
    all_ids = []
    for layer, lp in enumerate(params["layers"]):
        window = config.layer_window(layer) or FULL_WINDOW

        def attend_one(q, k, v, lp=lp, window=window):
            return dense_attention(q, k, v, positions_S, positions_S, window=window, sinks_H=lp.get("sinks"))

        def attend(q, k, v):
            split = lambda a: a.reshape(B, S, *a.shape[1:])  # noqa: E731 (rows are batch-major)
            return jax.vmap(attend_one)(split(q), split(k), split(v)).reshape(q.shape)

        rows = RowRouting(routing, jnp.asarray(log_pop_LE[layer]), seed_T, positions_T, layer) if calibrated else None
        x, ids = decoder_layer(config, lp, x, positions_T, attend, backend=backend, routing=rows,
                               experts_fn=experts_fn)
        if ids is not None:
            all_ids.append(ids)
    return unembed(config, params, x).reshape(B, S, -1), all_ids


def reference_forward(config: ModelConfig, params: dict, tokens, backend: str | None = None,
                      routing: RoutingProfile | None = None, routing_seed: int = 0):
    """Logits [T, V] f32 of one whole sequence, and the routing ids of every layer
    (list of [T, K] int32, empty for dense models). routing: a routing profile (None or
    "uniform": the router's own top-k), for a request whose routing seed is `routing_seed`."""
    logits, all_ids = batch_forward(config, params, jnp.asarray(tokens, jnp.int32)[None], backend, routing,
                                    (routing_seed,))
    return logits[0], all_ids


def reference_logits(config: ModelConfig, params: dict, tokens) -> jax.Array:
    """Logits [T, V] (f32) of a whole sequence, computed without paging or batching."""
    return reference_forward(config, params, tokens)[0]
