"""What the checkpoint formats share: a weight's path in the params pytree, the pytree's leaves,
the shapes the model declares for them, the pytree a loader fills (per-layer dicts, or [L, ...]
stacks written in place), and the helpers their error messages use."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from lp_jax.model.config import ModelConfig
from lp_jax.model.spec import layer_spec, model_spec

# A weight's place in the params pytree: ("embed",) or ("layers", 3, "wq").
WeightPath = tuple


def leaves(tree, prefix: WeightPath = ()):
    """(path, leaf) pairs of a params-shaped pytree (dicts and lists)."""
    if isinstance(tree, dict):
        for key, sub in tree.items():
            yield from leaves(sub, prefix + (key,))
    elif isinstance(tree, (list, tuple)):
        for i, sub in enumerate(tree):
            yield from leaves(sub, prefix + (i,))
    else:
        yield prefix, tree


def weight_shapes(config: ModelConfig) -> dict[WeightPath, tuple[int, ...]]:
    return {path: s.shape for path, s in leaves(model_spec(config))}


def empty_params(config: ModelConfig, dtype, stacked: bool) -> dict:
    """The params pytree a loader fills with `put_weight`: "layers" as one dict of zeroed [L, ...]
    stacks (stacked, what the engine runs on; allocated first so that device memory peaks at the
    weights plus one layer's weight in transit) or as L empty dicts."""
    if stacked:
        return {"layers": {name: jnp.zeros((config.num_layers, *s.shape), dtype)
                           for name, s in layer_spec(config).items()}}
    return {"layers": [{} for _ in range(config.num_layers)]}


def put_weight(params: dict, path: WeightPath, weight: jax.Array) -> None:
    """Set the weight at `path`; a layer weight of stacked params is written into its stack in place."""
    if path[0] == "layers" and isinstance(params["layers"], dict):
        _, layer, name = path
        params["layers"][name] = _write_layer(params["layers"][name], layer, weight)
        return
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = weight


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_layer(stack_LX, layer, x_X):
    """stack_LX with x_X at [layer], in place (the stack is donated)."""
    return stack_LX.at[layer].set(x_X)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def listed(names) -> str:
    names = sorted(names)
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(repr(n) for n in names[:5]) + more
