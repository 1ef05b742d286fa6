"""Deterministic random weights, generated directly on the device from the model's declarations.

Each weight's key is derived from (seed, layer index, weight name), so any single weight can be
re-created on its own and the values do not depend on generation order. Matrices are drawn with
std 1/sqrt(fan_in) and norms are ones, so activations keep unit scale through 48 bf16 layers.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp

from lp_jax.model.config import ModelConfig
from lp_jax.model.spec import ParamSpec, layer_spec, model_spec


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "init", "fan_in"))
def _draw(key, *, shape, dtype, init, fan_in):
    if init == "ones":
        return jnp.ones(shape, dtype)
    if init == "zeros":
        return jnp.zeros(shape, dtype)
    return (jax.random.normal(key, shape, jnp.float32) * (fan_in ** -0.5)).astype(dtype)


def _weight_key(seed: int, layer: int, name: str) -> jax.Array:
    key = jax.random.fold_in(jax.random.key(seed), layer + 1)
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def init_weight(spec: ParamSpec, seed: int, layer: int, name: str, dtype) -> jax.Array:
    """One weight; `layer` is -1 for weights outside the decoder layers."""
    return _draw(_weight_key(seed, layer, name), shape=spec.shape, dtype=jnp.dtype(dtype),
                 init=spec.init, fan_in=spec.fan_in)


def init_layer(config: ModelConfig, layer: int, seed: int = 0, dtype=jnp.float32) -> dict:
    return {name: init_weight(s, seed, layer, name, dtype) for name, s in layer_spec(config).items()}


def init_params(config: ModelConfig, seed: int = 0, dtype=jnp.float32, stacked: bool = False) -> dict:
    """The whole params pytree (see `lp_jax.model.spec`) on the default device.

    stacked=True gives "layers" as one dict of [L, ...] arrays (what the engine runs on), built
    layer by layer in place, so memory peaks at the model plus one weight, not twice the model.
    The values are the same either way.
    """
    spec = model_spec(config)
    params = {name: init_weight(s, seed, -1, name, dtype) for name, s in spec.items() if name != "layers"}
    if stacked:
        params["layers"] = {name: _init_stacked(s, seed, name, jnp.dtype(dtype), config.num_layers)
                            for name, s in layer_spec(config).items()}
    else:
        params["layers"] = [init_layer(config, i, seed, dtype) for i in range(config.num_layers)]
    return params


@functools.partial(jax.jit, donate_argnums=(0,), static_argnames=("shape", "init", "fan_in"))
def _put_layer(stack, layer, key, *, shape, init, fan_in):
    return stack.at[layer].set(_draw(key, shape=shape, dtype=stack.dtype, init=init, fan_in=fan_in))


def _init_stacked(spec: ParamSpec, seed: int, name: str, dtype, num_layers: int) -> jax.Array:
    stack = jnp.zeros((num_layers, *spec.shape), dtype)
    for layer in range(num_layers):
        stack = _put_layer(stack, layer, _weight_key(seed, layer, name), shape=spec.shape, init=spec.init,
                           fan_in=spec.fan_in)
    return stack
