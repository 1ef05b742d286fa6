"""Next-token sampling on the device: greedy, temperature, top-k and top-p, seeded per request.

The key of a request's n-th sampled token is fold_in(key(seed), n), so its tokens do not depend
on which iteration or batch they were sampled in (schedules give the same random outputs too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def greedy(logits_BV):
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)


def _filter_top_k_top_p(logits_V, top_k, top_p):
    """Mask (to -inf) logits outside the top_k largest (top_k 0 = off) and outside the smallest
    set whose probability reaches top_p."""
    order = jnp.argsort(-logits_V)
    sorted_logits = logits_V[order]
    V = logits_V.shape[0]
    rank = jnp.arange(V)
    keep = jnp.where(top_k > 0, rank < top_k, True)
    probs = jax.nn.softmax(jnp.where(keep, sorted_logits, -jnp.inf))
    mass_before = jnp.cumsum(probs) - probs
    keep = keep & (mass_before < top_p)
    kept_sorted = jnp.where(keep, sorted_logits, -jnp.inf)
    return jnp.full((V,), -jnp.inf, logits_V.dtype).at[order].set(kept_sorted)


def sample(logits_BV, temperature_B, top_k_B, top_p_B, seed_B, step_B):
    """Token ids [B] int32; rows with temperature 0 are greedy. logits are f32."""

    def one(logits, temperature, top_k, top_p, seed, step):
        key = jax.random.fold_in(jax.random.key(seed), step)
        scaled = logits / jnp.maximum(temperature, 1e-6)
        return jax.random.categorical(key, _filter_top_k_top_p(scaled, top_k, top_p)).astype(jnp.int32)

    drawn = jax.vmap(one)(logits_BV, temperature_B, top_k_B, top_p_B, seed_B, step_B)
    return jnp.where(temperature_B > 0, drawn, greedy(logits_BV))
