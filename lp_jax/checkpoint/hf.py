"""HuggingFace (transformers) checkpoints in: config.json -> ModelConfig and safetensors -> params
(`load_hf`, `read_hf_config`).

`load_hf` works in three steps so that nothing is built before the whole checkpoint is known good:

1. `config_from_hf`: config.json (and generation_config.json's eos ids) -> ModelConfig.
2. `index_tensors` reads only the safetensors headers (name, shape, dtype and file of every tensor);
   `conversion_plan` lists `Rule`s: which of our weights come from which checkpoint tensors, the
   shape each tensor must have (derived from `lp_jax.model.spec`) and how to convert it;
   `validate` checks the index against the plan (missing, unexpected, misshaped, wrongly typed).
3. `read_weights` runs the rules one at a time: reads their tensors lazily (`safe_open`), converts
   them on the host in numpy, casts, and hands each weight to `place` (`jnp.asarray` here; a sharded
   `jax.device_put` later), so host memory peaks at one rule's tensors, not the whole checkpoint;
   with `stacked`, each layer's weight is written in place into its preallocated [L, ...] stack,
   so device memory peaks at the weights plus one layer's weight.

Published layouts handled: Qwen3 / Qwen3-MoE (torch Linear `[out, in]` weights, per-expert
`mlp.experts.E.{gate,up,down}_proj.weight`, router `mlp.gate.weight`), GPT-OSS as transformers'
`save_pretrained` writes it (`mlp.experts.gate_up_proj [E, D, 2F]` with gate and up interleaved in
the last axis, `down_proj [E, F, D]`) and as openai publishes it (the same experts packed in MXFP4:
`*_blocks`/`*_scales` with output features as rows).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from lp_jax.checkpoint.common import WeightPath, empty_params, listed, put_weight, read_json, weight_shapes
from lp_jax.checkpoint.mxfp4 import MXFP4_GROUP, dequantize_mxfp4
from lp_jax.model.config import ModelConfig, YarnScaling
from lp_jax.model.spec import ParamSpec, model_spec

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = ("BF16", "F16", "F32")  # safetensors' names of the floating types we read
LOAD_DTYPES = ("float32", "bfloat16", "float16")
# The model types read from config.json (Llama comes in as GGUF only: lp_jax.checkpoint.gguf).
HF_ARCHITECTURES = ("qwen3_moe", "gpt_oss", "qwen3")


# --- config.json -> ModelConfig ----------------------------------------------------------------

def _require(hf: dict, key: str):
    if hf.get(key) is None:
        raise ValueError(f"config.json has no {key!r}, which {hf['model_type']} needs")
    return hf[key]


def _rope(hf: dict, default_theta: float) -> tuple[float, YarnScaling | None]:
    """(rope_theta, YaRN scaling or None) from transformers 5's `rope_parameters` or the older
    top-level `rope_theta` + `rope_scaling` the published checkpoints use."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", default_theta)))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("unsupported partial_rotary_factor in config.json; lp-jax rotates whole heads")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "yarn":
        raise ValueError(f"unsupported rope_type {rope_type!r} in config.json; supported: default, yarn")
    extra = sorted(k for k in ("attention_factor", "mscale", "mscale_all_dim") if params.get(k) is not None)
    if extra:
        raise ValueError(f"unsupported YaRN parameters {extra} in config.json")
    original = int(params["original_max_position_embeddings"])
    factor = params.get("factor") or _require(hf, "max_position_embeddings") / original
    return theta, YarnScaling(factor=float(factor), beta_fast=float(params.get("beta_fast") or 32.0),
                              beta_slow=float(params.get("beta_slow") or 1.0),
                              original_max_position_embeddings=original,
                              truncate=bool(params.get("truncate", True)))


def _layer_types(hf: dict, arch: str, num_layers: int) -> tuple[str, ...]:
    """"full"/"sliding" per layer, with transformers' defaults when config.json lists none."""
    names = hf.get("layer_types")
    if names is None:
        if arch == "gpt_oss":  # alternating, starting with a sliding layer
            names = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
        elif hf.get("use_sliding_window") and hf.get("sliding_window"):
            # Qwen3 slides from layer max_window_layers on; Qwen3-MoE slides on every layer.
            first = hf.get("max_window_layers", 0) if arch == "qwen3" else 0
            names = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
        else:
            names = ["full_attention"] * num_layers
    ours = {"full_attention": "full", "sliding_attention": "sliding"}
    unknown = sorted(set(names) - set(ours))
    if unknown:
        raise ValueError(f"unsupported layer_types {unknown} in config.json; supported: {sorted(ours)}")
    return tuple(ours[n] for n in names)


def _eos_ids(*sources: dict | None) -> tuple[int, ...]:
    """Union, in order, of the eos ids of config.json and generation_config.json (int or list)."""
    ids: list[int] = []
    for source in sources:
        value = (source or {}).get("eos_token_id")
        for i in [value] if isinstance(value, int) else (value or []):
            if i not in ids:
                ids.append(int(i))
    return tuple(ids)


def _ffn_fields(hf: dict, arch: str) -> dict:
    """ModelConfig fields of the feed-forward part."""
    if arch == "qwen3":
        return {"intermediate_size": _require(hf, "intermediate_size")}
    if arch == "qwen3_moe":
        if hf.get("mlp_only_layers") or hf.get("decoder_sparse_step", 1) != 1:
            raise ValueError("unsupported Qwen3-MoE with dense layers (mlp_only_layers / "
                             "decoder_sparse_step != 1); lp-jax expects every layer to be MoE")
        num_experts = hf.get("num_experts") or _require(hf, "num_local_experts")
        return {"num_experts": num_experts, "num_experts_per_tok": _require(hf, "num_experts_per_tok"),
                "moe_intermediate_size": _require(hf, "moe_intermediate_size"),
                "intermediate_size": hf.get("intermediate_size", 0),
                "norm_topk_prob": bool(hf.get("norm_topk_prob", False))}
    F = _require(hf, "intermediate_size")  # gpt_oss: experts are the only MLP
    return {"num_experts": _require(hf, "num_local_experts"),
            "num_experts_per_tok": hf.get("num_experts_per_tok") or _require(hf, "experts_per_token"),
            "moe_intermediate_size": F, "intermediate_size": F, "router": "topk_softmax",
            "router_bias": True, "expert_bias": True, "activation": "clamped_swiglu",
            "swiglu_alpha": float(hf.get("swiglu_alpha", 1.702)),
            "swiglu_limit": float(hf.get("swiglu_limit", 7.0))}


def config_from_hf(hf: dict, generation: dict | None = None, name: str = "hf") -> ModelConfig:
    """Our ModelConfig from a parsed config.json (and optionally generation_config.json).

    Absent optional keys take transformers' defaults for that model type; absent dimensions are an
    error. Raises ValueError for an unsupported model_type or feature.
    """
    arch = hf.get("model_type")
    if arch not in HF_ARCHITECTURES:
        raise ValueError(f"unsupported model_type {arch!r}; supported: {', '.join(HF_ARCHITECTURES)}")
    gpt_oss = arch == "gpt_oss"
    if not gpt_oss and hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r} for {arch}; supported: silu")
    D, H = _require(hf, "hidden_size"), _require(hf, "num_attention_heads")
    L = _require(hf, "num_hidden_layers")
    theta, yarn = _rope(hf, default_theta=150000.0 if gpt_oss else 10000.0)
    layer_types = _layer_types(hf, arch, L)
    return ModelConfig(
        name=name, arch=arch, vocab_size=_require(hf, "vocab_size"), hidden_size=D, num_layers=L,
        num_heads=H, num_kv_heads=hf.get("num_key_value_heads") or H,
        head_dim=hf.get("head_dim") or D // H,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5 if gpt_oss else 1e-6)), rope_theta=theta,
        max_position_embeddings=_require(hf, "max_position_embeddings"), qk_norm=not gpt_oss,
        attention_bias=bool(hf.get("attention_bias", gpt_oss)), attention_sinks=gpt_oss,
        sliding_window=hf.get("sliding_window") if "sliding" in layer_types else None,
        layer_types=layer_types, rope_scaling=yarn,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        eos_token_ids=_eos_ids(hf, generation), **_ffn_fields(hf, arch))


def _default_dtype(hf: dict) -> str:
    """config.json's dtype (transformers 5) or torch_dtype (older), else float32."""
    return hf.get("dtype") or hf.get("torch_dtype") or "float32"


def _load_dtype(requested) -> np.dtype:
    """The dtype to load weights in, from a dtype, a type or a name such as "bfloat16"."""
    try:
        dtype = jnp.dtype(requested)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in LOAD_DTYPES:
        name = dtype.name if dtype is not None else repr(requested)
        raise ValueError(f"unsupported dtype {name}; supported: {', '.join(LOAD_DTYPES)}")
    return dtype


# --- the tensors of a checkpoint ---------------------------------------------------------------

@dataclass(frozen=True)
class TensorInfo:
    """One checkpoint tensor as its safetensors header describes it."""

    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors' name: "F32", "BF16", "U8", ...


def _header(file: Path) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of one safetensors file, without reading its data."""
    try:
        with safe_open(file, "np") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            return {name: TensorInfo(file, tuple(s.get_shape()), s.get_dtype()) for name, s in slices.items()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read safetensors file {file}: {e} (truncated or corrupted?)") from None


def index_tensors(path: Path) -> dict[str, TensorInfo]:
    """Every tensor of the checkpoint in `path`: one model.safetensors, or the shards listed in
    model.safetensors.index.json. Only headers are read."""
    if (path / INDEX_FILE).exists():
        weight_map = read_json(path / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{path / INDEX_FILE} has no weight_map")
        index: dict[str, TensorInfo] = {}
        for file in sorted(set(weight_map.values())):
            index |= _header(path / file)
        for name, file in weight_map.items():
            if name not in index or index[name].file.name != file:
                raise ValueError(f"tensor {name!r} is listed in {INDEX_FILE} under {file} but that file "
                                 "does not hold it")
        return index
    if (path / SINGLE_FILE).exists():
        return _header(path / SINGLE_FILE)
    raise ValueError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")


# --- conversion rules --------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """Some of our weights made from some checkpoint tensors.

    targets: where the produced weights go in the params pytree; sources: checkpoint tensor names;
    shapes: the shape each source must have; packed: the sources are MXFP4 uint8 blocks and scales
    rather than floating point; convert(*sources) -> one numpy array per target, in our layout.
    """

    targets: tuple[WeightPath, ...]
    sources: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    convert: Callable[..., tuple[np.ndarray, ...]]
    packed: bool = False


def _copy(target: WeightPath, source: str, shape) -> Rule:
    """Same layout in the checkpoint (norms, embedding, sinks, some biases)."""
    return Rule((target,), (source,), (tuple(shape),), lambda x: (x,))


def _flat(target: WeightPath, source: str, shape) -> Rule:
    """A bias stored flat, e.g. q_proj.bias [H*A] -> bq [H, A]."""
    return Rule((target,), (source,), ((math.prod(shape),),), lambda b: (b.reshape(shape),))


def _linear(target: WeightPath, source: str, shape, n_in: int) -> Rule:
    """A torch Linear weight [out, in] -> ours, whose first `n_in` axes are the inputs:
    e.g. q_proj [H*A, D] -> wq [D, H, A] (n_in 1), o_proj [D, H*A] -> wo [H, A, D] (n_in 2)."""
    hf_shape = (math.prod(shape[n_in:]), math.prod(shape[:n_in]))
    return Rule((target,), (source,), (hf_shape,), lambda w: (w.T.reshape(shape),))


def _per_expert(target: WeightPath, sources: list[str], shape) -> Rule:
    """E torch Linear weights [out, in] (Qwen3-MoE's experts.e.*_proj) -> ours [E, in, out]."""
    E, n_in, n_out = shape
    return Rule((target,), tuple(sources), ((n_out, n_in),) * E, lambda *ws: (np.stack([w.T for w in ws]),))


def _deinterleave(x):
    # GPT-OSS alternates gate and up along the fused axis: gate = even, up = odd.
    return x[..., 0::2], x[..., 1::2]


def _interleaved(targets: tuple[WeightPath, WeightPath], source: str, shape) -> Rule:
    """GPT-OSS's fused gate_up tensor [..., 2F] (weight or bias) -> gate [..., F], up [..., F]."""
    hf_shape = (*shape[:-1], 2 * shape[-1])
    return Rule(targets, (source,), (hf_shape,), _deinterleave)


def _mxfp4_experts(targets: tuple[WeightPath, ...], prefix: str, shape) -> Rule:
    """Published GPT-OSS experts: `prefix`_blocks [E, R, in/32, 16] and _scales [E, R, in/32],
    rows R = output features (gate/up interleaved when there are two targets) -> ours [E, in, out]
    per target. Dequantised one expert at a time so host memory stays at one expert's f32 copy."""
    E, n_in, n_out = shape
    if n_in % MXFP4_GROUP:
        raise ValueError(f"{prefix}: input size {n_in} is not a multiple of the MXFP4 group {MXFP4_GROUP}")
    rows, groups = n_out * len(targets), n_in // MXFP4_GROUP

    def convert(blocks, scales):
        w = np.stack([dequantize_mxfp4(blocks[e], scales[e]) for e in range(E)])  # [E, R, in]
        w = w.transpose(0, 2, 1)
        return _deinterleave(w) if len(targets) == 2 else (w,)

    return Rule(targets, (prefix + "_blocks", prefix + "_scales"),
                ((E, rows, groups, MXFP4_GROUP // 2), (E, rows, groups)), convert, packed=True)


def _in_layer(i: int) -> Callable[[str], WeightPath]:
    return lambda name: ("layers", i, name)


def _attention_rules(config: ModelConfig, i: int, spec: dict[str, ParamSpec]) -> list[Rule]:
    p, at = f"model.layers.{i}.", _in_layer(i)
    rules = [
        _copy(at("input_norm"), p + "input_layernorm.weight", spec["input_norm"].shape),
        _copy(at("post_norm"), p + "post_attention_layernorm.weight", spec["post_norm"].shape),
        *(_linear(at(w), f"{p}self_attn.{proj}_proj.weight", spec[w].shape, 1)
          for w, proj in (("wq", "q"), ("wk", "k"), ("wv", "v"))),
        _linear(at("wo"), p + "self_attn.o_proj.weight", spec["wo"].shape, 2),
    ]
    if config.attention_bias:
        rules += [_flat(at(b), f"{p}self_attn.{proj}_proj.bias", spec[b].shape)
                  for b, proj in (("bq", "q"), ("bk", "k"), ("bv", "v"))]
        rules.append(_copy(at("bo"), p + "self_attn.o_proj.bias", spec["bo"].shape))
    if config.qk_norm:
        rules += [_copy(at(n), f"{p}self_attn.{n}.weight", spec[n].shape) for n in ("q_norm", "k_norm")]
    if config.attention_sinks:
        rules.append(_copy(at("sinks"), p + "self_attn.sinks", spec["sinks"].shape))
    return rules


def _ffn_rules(config: ModelConfig, i: int, spec: dict[str, ParamSpec], mxfp4: bool) -> list[Rule]:
    p, at = f"model.layers.{i}.mlp.", _in_layer(i)
    if not config.is_moe:
        return [_linear(at(w), f"{p}{w[2:]}_proj.weight", spec[w].shape, 1)
                for w in ("w_gate", "w_up", "w_down")]
    if config.arch == "qwen3_moe":
        experts = range(config.num_experts)
        return [_linear(at("router"), p + "gate.weight", spec["router"].shape, 1),
                *(_per_expert(at(w), [f"{p}experts.{e}.{w[2:]}_proj.weight" for e in experts], spec[w].shape)
                  for w in ("w_gate", "w_up", "w_down"))]
    rules = [_linear(at("router"), p + "router.weight", spec["router"].shape, 1),
             _copy(at("router_bias"), p + "router.bias", spec["router_bias"].shape),
             _interleaved((at("b_gate"), at("b_up")), p + "experts.gate_up_proj_bias", spec["b_gate"].shape),
             _copy(at("b_down"), p + "experts.down_proj_bias", spec["b_down"].shape)]
    if mxfp4:
        return rules + [_mxfp4_experts((at("w_gate"), at("w_up")), p + "experts.gate_up_proj",
                                       spec["w_gate"].shape),
                        _mxfp4_experts((at("w_down"),), p + "experts.down_proj", spec["w_down"].shape)]
    return rules + [_interleaved((at("w_gate"), at("w_up")), p + "experts.gate_up_proj", spec["w_gate"].shape),
                    _copy(at("w_down"), p + "experts.down_proj", spec["w_down"].shape)]


def conversion_plan(config: ModelConfig, mxfp4: bool = False) -> list[Rule]:
    """Every rule needed to build the params pytree of `config`; `mxfp4` selects the packed GPT-OSS
    expert layout. Expected checkpoint shapes are derived from `model_spec(config)`."""
    spec = model_spec(config)
    rules = [_copy(("embed",), "model.embed_tokens.weight", spec["embed"].shape),
             _copy(("final_norm",), "model.norm.weight", spec["final_norm"].shape)]
    if "lm_head" in spec:
        rules.append(_linear(("lm_head",), "lm_head.weight", spec["lm_head"].shape, 1))
    for i, layer in enumerate(spec["layers"]):
        rules += _attention_rules(config, i, layer) + _ffn_rules(config, i, layer, mxfp4)
    return rules


# --- validation --------------------------------------------------------------------------------

def _benign(name: str, config: ModelConfig) -> bool:
    """Tensors a checkpoint may carry that we do not need: RoPE tables older exports saved, and
    the copy of the embedding some tied checkpoints still store as lm_head (transformers ignores it)."""
    return name.endswith("rotary_emb.inv_freq") or (config.tie_word_embeddings and name == "lm_head.weight")


def validate(plan: list[Rule], index: dict[str, TensorInfo], config: ModelConfig) -> None:
    """ValueError naming the first problem: missing tensors, unexpected tensors, a tensor of the
    wrong shape, a tensor of the wrong dtype."""
    expected = {name for rule in plan for name in rule.sources}
    missing = expected - index.keys()
    if missing:
        raise ValueError(f"checkpoint is missing tensor(s) {listed(missing)}")
    extra = {n for n in index.keys() - expected if not _benign(n, config)}
    if extra:
        raise ValueError(f"checkpoint has unexpected tensor(s) {listed(extra)} for {config.arch}")
    for rule in plan:
        allowed = ("U8",) if rule.packed else FLOAT_DTYPES
        for name, shape in zip(rule.sources, rule.shapes):
            info = index[name]
            if info.shape != shape:
                raise ValueError(f"tensor {name!r} in {info.file.name} has shape {info.shape}; "
                                 f"expected {shape}")
            if info.dtype not in allowed:
                raise ValueError(f"tensor {name!r} in {info.file.name} has dtype {info.dtype}; "
                                 f"expected {' or '.join(allowed)}")


# --- reading -----------------------------------------------------------------------------------

def read_weights(config: ModelConfig, plan: list[Rule], index: dict[str, TensorInfo], dtype,
                 place: Callable[[WeightPath, np.ndarray], jax.Array] = lambda path, x: jnp.asarray(x),
                 stacked: bool = False) -> dict:
    """Run a validated plan: the params pytree with every weight cast to `dtype` and put where
    `place(path, host_array)` puts it. Tensors are read lazily, one rule at a time.

    stacked=True: "layers" is one dict of [L, ...] arrays (what the engine runs on), allocated
    first and filled layer by layer in place, so device memory peaks at the weights plus one
    layer's weight in transit. (Loading per-layer arrays and stacking them afterwards holds both
    copies at once: twice the weights, more than an 80 GB GPU has for Qwen3-30B-A3B.)"""
    shapes = weight_shapes(config)
    params = empty_params(config, dtype, stacked)
    with contextlib.ExitStack() as stack:
        handles = {}
        for rule in plan:
            arrays = []
            for name in rule.sources:
                file = index[name].file
                try:
                    if file not in handles:
                        handles[file] = stack.enter_context(safe_open(file, "np"))
                    arrays.append(handles[file].get_tensor(name))
                except (SafetensorError, OSError) as e:
                    raise ValueError(f"cannot read tensor {name!r} from {file}: {e}") from None
            for path, value in zip(rule.targets, rule.convert(*arrays), strict=True):
                assert value.shape == shapes[path], f"{path}: made {value.shape}, declared {shapes[path]}"
                weight = place(path, value.astype(dtype, copy=False))
                put_weight(params, path, weight)
                del weight  # the next weight's transfer must not find this one still alive
    return params


def read_hf_config(path) -> ModelConfig:
    """The ModelConfig of a HuggingFace checkpoint directory (config.json, generation_config.json's
    eos ids), without touching its weights."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"no config.json in {path}")
    hf = read_json(path / "config.json")
    generation = read_json(path / "generation_config.json") if (path / "generation_config.json").exists() else None
    return config_from_hf(hf, generation, name=path.name)


def load_hf(path, dtype=None, stacked: bool = False) -> tuple[ModelConfig, dict]:
    """(config, params) of a HuggingFace checkpoint directory (config.json + safetensors, single file
    or sharded), for model types qwen3_moe, gpt_oss and qwen3.

    stacked: "layers" as one dict of [L, ...] arrays filled in place (see `read_weights`), what
    the engine runs on; otherwise a list of per-layer dicts (what `reference_forward` reads).

    dtype: of every weight; default config.json's dtype (torch_dtype), else float32. MXFP4 experts
    are dequantised exactly. The whole checkpoint is validated (tensor names, shapes, dtypes, file
    integrity) before any weight is read; any problem raises ValueError naming it.
    """
    path = Path(path)
    config = read_hf_config(path)
    dtype = _load_dtype(dtype or _default_dtype(read_json(path / "config.json")))
    index = index_tensors(path)
    mxfp4 = config.arch == "gpt_oss" and any(n.endswith("experts.gate_up_proj_blocks") for n in index)
    plan = conversion_plan(config, mxfp4)
    validate(plan, index, config)
    return config, read_weights(config, plan, index, dtype, stacked=stacked)
