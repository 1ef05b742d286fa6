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
from pallas_kernels.attention_reference import FULL_WINDOW, dense_attention

# attend(q [T, H, A], k [T, N, A], v [T, N, A]) -> [T, H, A]
Attend = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def decoder_layer(config: ModelConfig, lp: dict, x_TD, positions_T, attend: Attend, valid_T=None,
                  backend: str | None = None, expert_layer=None):
    """Pre-norm attention block then pre-norm feed-forward block, both residual.

    expert_layer: see `feed_forward` (expert weights passed as whole layer stacks).
    Returns (x [T, D], routing ids [T, K] or None).
    """
    h = rms_norm(x_TD, lp["input_norm"], config.rms_norm_eps)
    q, k, v = qkv(config, lp, h, positions_T)
    x_TD = x_TD + attention_out(lp, attend(q, k, v))
    h = rms_norm(x_TD, lp["post_norm"], config.rms_norm_eps)
    y, ids = feed_forward(config, lp, h, valid_T, backend, expert_layer)
    return x_TD + y, ids


def embed(params: dict, tokens_T):
    return params["embed"][tokens_T]


def unembed(config: ModelConfig, params: dict, x_TD):
    """Final norm and LM head: logits [T, V] in f32."""
    h = rms_norm(x_TD, params["final_norm"], config.rms_norm_eps)
    w = params["embed"].T if config.tie_word_embeddings else params["lm_head"]
    return jnp.einsum("td,dv->tv", h, w, preferred_element_type=jnp.float32)


def reference_forward(config: ModelConfig, params: dict, tokens, backend: str | None = None):
    """Logits [T, V] f32 of one whole sequence, and the routing ids of every layer
    (list of [T, K] int32, empty for dense models)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    T = tokens.shape[0]
    positions = jnp.arange(T, dtype=jnp.int32)
    x = embed(params, tokens)
    routing = []
    for layer, lp in enumerate(params["layers"]):
        window = config.layer_window(layer) or FULL_WINDOW

        def attend(q, k, v, lp=lp, window=window):
            return dense_attention(q, k, v, positions, positions, window=window, sinks_H=lp.get("sinks"))

        x, ids = decoder_layer(config, lp, x, positions, attend, backend=backend)
        if ids is not None:
            routing.append(ids)
    return unembed(config, params, x), routing


def reference_logits(config: ModelConfig, params: dict, tokens) -> jax.Array:
    """Logits [T, V] (f32) of a whole sequence, computed without paging or batching."""
    return reference_forward(config, params, tokens)[0]
