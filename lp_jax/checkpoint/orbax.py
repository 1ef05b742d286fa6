"""Our own checkpoints: the params pytree written and read back with orbax, the ModelConfig beside it
as JSON (`save`, `restore`). Shapes are checked against the model's declarations both ways."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from lp_jax.checkpoint.common import WeightPath, leaves, listed, read_json, weight_shapes
from lp_jax.model.config import ModelConfig, YarnScaling

CONFIG_FILE = "lp_jax_config.json"
PARAMS_DIR = "params"


def _dotted(paths) -> str:
    """("layers", 3, "wq") -> 'layers.3.wq' (the first few of `paths`)."""
    return listed(".".join(map(str, p)) for p in paths).replace("'", "")


def _check_against_spec(config: ModelConfig, shapes: dict[WeightPath, tuple[int, ...]], what: str) -> None:
    declared = weight_shapes(config)
    if declared.keys() - shapes.keys():
        raise ValueError(f"{what} lacks weight(s) {_dotted(declared.keys() - shapes.keys())}")
    if shapes.keys() - declared.keys():
        raise ValueError(f"{what} has weight(s) {_dotted(shapes.keys() - declared.keys())}, "
                         f"which {config.name} does not declare")
    for path, shape in shapes.items():
        if tuple(shape) != declared[path]:
            raise ValueError(f"{what}: weight {_dotted([path])} has shape {tuple(shape)}; "
                             f"expected {declared[path]}")


def config_to_json(config: ModelConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_json(d: dict) -> ModelConfig:
    d = dict(d)
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = YarnScaling(**d["rope_scaling"])
    d["layer_types"] = tuple(d["layer_types"])
    d["eos_token_ids"] = tuple(d["eos_token_ids"])
    return ModelConfig(**d)


def save(path, config: ModelConfig, params: dict) -> None:
    """Write params (checked against the config's declarations) with orbax to `path`/params and
    the config as JSON to `path`/lp_jax_config.json. `path` must not exist yet."""
    path = Path(path).absolute()
    if path.exists():
        raise ValueError(f"{path} already exists; lp-jax does not overwrite checkpoints")
    _check_against_spec(config, {p: x.shape for p, x in leaves(params)}, "params")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    (path / CONFIG_FILE).write_text(json.dumps(config_to_json(config), indent=2) + "\n")


def restore(path) -> tuple[ModelConfig, dict]:
    """(config, params) written by `save`, each weight in the dtype it was saved in, on the default
    device. The stored shapes are checked against the config before anything is read."""
    path = Path(path).absolute()
    if not (path / CONFIG_FILE).exists():
        raise ValueError(f"no {CONFIG_FILE} in {path}: not an lp-jax checkpoint")
    config = config_from_json(read_json(path / CONFIG_FILE))
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(path / PARAMS_DIR).item_metadata.tree
    _check_against_spec(config, {p: m.shape for p, m in leaves(stored)}, f"checkpoint {path}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored)
    return config, checkpointer.restore(path / PARAMS_DIR, target)
