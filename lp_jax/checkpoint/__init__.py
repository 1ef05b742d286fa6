"""Checkpoints, one module per format: hf (transformers config.json + safetensors in: `load_hf`,
`read_hf_config`, `config_from_hf`), gguf (llama.cpp files in: `GGUFCheckpoint`, `load_gguf`; their
tokenizer as HuggingFace documents in gguf_tokenizer), orbax (our own params pytree out and back in: `save`,
`restore`), hf_save (Qwen3 / Qwen3-MoE params out: `save_hf`), tokenizer (a folder's tokenizer.json,
byte-level BPE training); mxfp4 (GPT-OSS's packed experts) and common (weight paths, declared shapes)
serve them."""

from lp_jax.checkpoint.gguf import GGUFCheckpoint, load_gguf
from lp_jax.checkpoint.hf import config_from_hf, load_hf, read_hf_config
from lp_jax.checkpoint.mxfp4 import dequantize_mxfp4
from lp_jax.checkpoint.orbax import restore, save

__all__ = ["GGUFCheckpoint", "load_gguf", "config_from_hf", "dequantize_mxfp4", "load_hf", "read_hf_config", "restore", "save"]
