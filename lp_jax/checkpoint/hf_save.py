"""HuggingFace (transformers) checkpoints out: params -> config.json + model.safetensors (`save_hf`),
for qwen3_moe and qwen3, the layout `load_hf` reads back (torch Linear weights `[out, in]`,
per-expert `mlp.experts.E.{gate,up,down}_proj.weight`, router `mlp.gate.weight`).

Writes what transformers' `save_pretrained` would for these architectures, so the folder also
loads in transformers. GPT-OSS is refused (its fused expert layout is not needed here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from lp_jax.checkpoint.common import leaves
from lp_jax.checkpoint.hf import SINGLE_FILE
from lp_jax.checkpoint.orbax import _check_against_spec
from lp_jax.model.config import ModelConfig

_HF_CLASS = {"qwen3_moe": "Qwen3MoeForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def hf_config_json(config: ModelConfig, dtype: str) -> dict:
    """config.json of `config` (the keys `config_from_hf` reads and transformers expects)."""
    if config.arch not in _HF_CLASS:
        raise ValueError(f"save_hf writes {', '.join(_HF_CLASS)}, not {config.arch!r}")
    if config.rope_scaling is not None or "sliding" in config.layer_types:
        raise ValueError(f"{config.name}: save_hf writes full attention without RoPE scaling only")
    hf = {
        "architectures": [_HF_CLASS[config.arch]], "model_type": config.arch, "dtype": dtype,
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "head_dim": config.head_dim,
        "hidden_act": "silu", "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
        "max_position_embeddings": config.max_position_embeddings, "attention_bias": False,
        "use_sliding_window": False, "sliding_window": None,
        "tie_word_embeddings": config.tie_word_embeddings, "intermediate_size": config.intermediate_size,
        "bos_token_id": None, "pad_token_id": None,
        "eos_token_id": list(config.eos_token_ids) or None,
    }
    if config.arch == "qwen3_moe":
        hf |= {"num_experts": config.num_experts, "num_experts_per_tok": config.num_experts_per_tok,
               "moe_intermediate_size": config.moe_intermediate_size, "norm_topk_prob": config.norm_topk_prob,
               "decoder_sparse_step": 1, "mlp_only_layers": []}
    return hf


def _torch_linear(w_in_out: np.ndarray, n_in: int) -> np.ndarray:
    """Ours (first `n_in` axes are inputs) -> torch Linear [out, in]."""
    n = int(np.prod(w_in_out.shape[:n_in]))
    return np.ascontiguousarray(w_in_out.reshape(n, -1).T)


def hf_tensors(config: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """The checkpoint tensors of `params` (per-layer list form), by transformers' names."""
    t = {"model.embed_tokens.weight": params["embed"], "model.norm.weight": params["final_norm"]}
    if not config.tie_word_embeddings:
        t["lm_head.weight"] = _torch_linear(params["lm_head"], 1)
    for i, lp in enumerate(params["layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = lp["input_norm"]
        t[p + "post_attention_layernorm.weight"] = lp["post_norm"]
        for w, proj in (("wq", "q"), ("wk", "k"), ("wv", "v")):
            t[f"{p}self_attn.{proj}_proj.weight"] = _torch_linear(lp[w], 1)
        t[p + "self_attn.o_proj.weight"] = _torch_linear(lp["wo"], 2)
        t[p + "self_attn.q_norm.weight"] = lp["q_norm"]
        t[p + "self_attn.k_norm.weight"] = lp["k_norm"]
        if config.is_moe:
            t[p + "mlp.gate.weight"] = _torch_linear(lp["router"], 1)
            for w in ("w_gate", "w_up", "w_down"):
                for e in range(config.num_experts):
                    t[f"{p}mlp.experts.{e}.{w[2:]}_proj.weight"] = _torch_linear(lp[w][e], 1)
        else:
            for w in ("w_gate", "w_up", "w_down"):
                t[f"{p}mlp.{w[2:]}_proj.weight"] = _torch_linear(lp[w], 1)
    return {name: np.ascontiguousarray(x) for name, x in t.items()}


def save_hf(path, config: ModelConfig, params: dict, dtype: str = "float32") -> None:
    """Write `params` (per-layer list form, checked against the config's declarations) as
    config.json + model.safetensors in `path` (created; existing model files are refused)."""
    path = Path(path)
    hf = hf_config_json(config, dtype)  # refuses an architecture it cannot write before any work
    for name in ("config.json", SINGLE_FILE):
        if (path / name).exists():
            raise ValueError(f"{path / name} already exists; lp-jax does not overwrite checkpoints")
    host = {p: np.asarray(x).astype(dtype) for p, x in leaves(params)}
    _check_against_spec(config, {p: x.shape for p, x in host.items()}, "params")
    tree: dict = {"layers": [{} for _ in range(config.num_layers)]}
    for p, x in host.items():
        node = tree
        for key in p[:-1]:
            node = node[key]
        node[p[-1]] = x
    path.mkdir(parents=True, exist_ok=True)
    save_file(hf_tensors(config, tree), str(path / SINGLE_FILE), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
