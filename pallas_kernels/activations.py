"""Gated activations of the MoE experts, shared by the reference path and the kernels' epilogues.

Both take the gate and up projections (biases already added) and return the value the down
projection consumes. f32 in, f32 out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def swiglu(gate, up):
    """Qwen3: silu(gate) * up."""
    return jax.nn.silu(gate) * up


def clamped_swiglu(gate, up, alpha: float = 1.702, limit: float = 7.0):
    """GPT-OSS: gate clamped above at `limit`, up clamped to [-limit, limit],
    gate * sigmoid(alpha * gate) * (up + 1)."""
    gate = jnp.minimum(gate, limit)
    up = jnp.clip(up, -limit, limit)
    return gate * jax.nn.sigmoid(alpha * gate) * (up + 1.0)


def apply_activation(name: str, gate, up, alpha: float = 1.702, limit: float = 7.0):
    if name == "swiglu":
        return swiglu(gate, up)
    if name == "clamped_swiglu":
        return clamped_swiglu(gate, up, alpha, limit)
    raise ValueError(f"unknown activation {name!r}")
