"""Checkpoints: transformers safetensors in (`load_hf`, `read_hf_config`, `config_from_hf`), our own
params pytree out and back in through orbax (`save`, `restore`)."""

from lp_jax.checkpoint.hf import config_from_hf, dequantize_mxfp4, load_hf, read_hf_config, restore, save

__all__ = ["config_from_hf", "dequantize_mxfp4", "load_hf", "read_hf_config", "restore", "save"]
