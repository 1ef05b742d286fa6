"""What both checkpoint formats share: a weight's path in the params pytree, the pytree's leaves,
the shapes the model declares for them, and the helpers their error messages use."""

from __future__ import annotations

import json
from pathlib import Path

from lp_jax.model.config import ModelConfig
from lp_jax.model.spec import model_spec

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


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def listed(names) -> str:
    names = sorted(names)
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(repr(n) for n in names[:5]) + more
