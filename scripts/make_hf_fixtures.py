"""Regenerate the HuggingFace parity fixtures under tests/fixtures/ (one command, CPU, seconds).

    /work/hfenv/bin/python scripts/make_hf_fixtures.py

It needs Python 3.11 with torch 2.13.0 (CPU) and transformers 5.24.0, kept out of the project's
Python 3.12 venv (which must never get torch). To make such an environment:

    python3.11 -m venv /work/hfenv
    /work/hfenv/bin/pip install torch==2.13.0 transformers==5.24.0 safetensors numpy

(on the project's machines `pip install torch==2.13.0` under 3.11 takes a local CPU wheel; elsewhere add
`--index-url https://download.pytorch.org/whl/cpu` to avoid the multi-GB CUDA build).

What it writes, for each tiny model built with transformers' own classes in float32 (dims of our tiny
presets: hidden 64, 4 heads, 2 KV heads, head dim 16, vocab 512, 4 layers; MoE 8 experts top-2, F 32):

    tests/fixtures/<name>/            the checkpoint as `save_pretrained` writes it (safetensors)
    tests/fixtures/<name>/hf_outputs.npz
        tokens_<T> [T] int32 and logits_<T> [T, V] float32 for T in 1, 7, 257;
        prompt [P] int32 and greedy [8] int32: `generate(do_sample=False)` from that prompt
    tests/fixtures/<name>/fixture.json  transformers/torch versions, seeds, smallest greedy margin

Models: tiny-qwen3-moe (Qwen3MoeForCausalLM), tiny-gpt-oss (GptOssForCausalLM: sliding window 32,
alternating sliding/full layers, YaRN, sinks, biases), tiny-qwen3 (Qwen3ForCausalLM, tied embeddings,
saved as a *sharded* checkpoint with model.safetensors.index.json). Every weight is redrawn with unit
activation scale, and norms, biases and sinks get non-trivial random values, so a missing bias or norm
shows in the logits.

tiny-gpt-oss's expert weights are drawn as MXFP4 (random packed FP4 blocks and E8M0 scales) and
dequantised by transformers' own `convert_moe_packed_tensors`, so the same model is also written in
the layout of the published openai/gpt-oss checkpoints (tests/fixtures/tiny-gpt-oss-mxfp4:
`*_blocks`/`*_scales` uint8, `quantization_config` in config.json); the script checks that
transformers itself loads that copy to the same logits. tests/fixtures/mxfp4_golden.npz holds random
blocks/scales over the whole exponent range and transformers' dequantisation of them (bf16 stored as
float32, with the (rows, columns) transpose transformers applies).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (GptOssConfig, GptOssForCausalLM, Mxfp4Config, Qwen3Config, Qwen3ForCausalLM,
                          Qwen3MoeConfig, Qwen3MoeForCausalLM)
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
LENGTHS = (1, 7, 257)  # 257 > the GPT-OSS window (32) and > 200
PROMPT_LEN = 28  # prompt + 8 new tokens crosses the 32-token window during decoding
NEW_TOKENS = 8
EOS = [510, 511]  # recorded in config.json so the loader's eos mapping is exercised

# Dims of lp_jax.model.config's tiny presets.
COMMON = dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, eos_token_id=EOS)


def qwen3_moe_model() -> torch.nn.Module:
    config = Qwen3MoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                            intermediate_size=128, norm_topk_prob=True, rms_norm_eps=1e-6,
                            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    return Qwen3MoeForCausalLM(config)


def gpt_oss_model() -> torch.nn.Module:
    config = GptOssConfig(**COMMON, num_local_experts=8, num_experts_per_tok=2, intermediate_size=32,
                          sliding_window=32, rms_norm_eps=1e-5,
                          layer_types=["sliding_attention", "full_attention"] * 2,
                          rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0,
                                           "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                           "original_max_position_embeddings": 1024})
    return GptOssForCausalLM(config)


def qwen3_model() -> torch.nn.Module:
    config = Qwen3Config(**COMMON, intermediate_size=128, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    return Qwen3ForCausalLM(config)


# --- weights ------------------------------------------------------------------------------------

def _is_norm(name: str) -> bool:
    return name.endswith(("layernorm.weight", "norm.weight"))


def _fan_in(name: str, shape: torch.Size) -> int:
    # torch Linear weights are [out, in]; GPT-OSS's fused expert tensors are [E, in, out].
    if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
        return shape[1]
    return shape[-1]


def redraw_weights(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Overwrite every parameter: matrices N(0, 1/fan_in), embeddings N(0, 1), norms U(0.5, 1.5),
    biases N(0, 0.1^2), sinks N(0, 1) — values that make a dropped norm, bias or sink visible."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if _is_norm(name):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith("sinks"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(_fan_in(name, p.shape)))


def random_mxfp4(gen: torch.Generator, rows_shape: tuple[int, ...], cols: int, exp_lo: int, exp_hi: int):
    """Random MXFP4 tensor with `cols` logical columns per row: (blocks [*rows, cols/32, 16] uint8,
    scales [*rows, cols/32] uint8 with exponents in [exp_lo, exp_hi])."""
    groups = cols // 32
    blocks = torch.randint(0, 256, (*rows_shape, groups, 16), generator=gen, dtype=torch.int32)
    scales = torch.randint(exp_lo, exp_hi + 1, (*rows_shape, groups), generator=gen, dtype=torch.int32)
    return blocks.to(torch.uint8), scales.to(torch.uint8)


def mxfp4_experts(model: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw GPT-OSS expert matrices as MXFP4, load transformers' dequantisation of them into the
    model, and return the packed tensors under the published checkpoint's names.

    Exponents 121..124 (scales 2^-6..2^-3) keep the experts' output at about unit scale.
    """
    packed = {}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            experts = layer.mlp.experts
            E, D, F = experts.num_experts, experts.hidden_size, experts.intermediate_size
            prefix = f"model.layers.{i}.mlp.experts."
            # Published layout: rows are output features (gate/up interleaved), packed along inputs.
            for proj, rows, cols in (("gate_up_proj", 2 * F, D), ("down_proj", D, F)):
                blocks, scales = random_mxfp4(gen, (E, rows), cols, 121, 124)
                dense = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)
                getattr(experts, proj).copy_(dense.to(torch.float32))
                packed[prefix + proj + "_blocks"] = blocks
                packed[prefix + proj + "_scales"] = scales
    return packed


# --- outputs ------------------------------------------------------------------------------------

def logits_of(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(tokens.astype(np.int64))[None])
    return out.logits[0].to(torch.float32).numpy()


def greedy(model: torch.nn.Module, prompt: np.ndarray) -> tuple[np.ndarray, float]:
    """transformers' greedy continuation of `prompt` and the smallest top-1 minus top-2 logit gap
    along it (a tiny gap would make the parity test flaky, so it is recorded and checked)."""
    ids = torch.from_numpy(prompt.astype(np.int64))[None]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    new = out.sequences[0, len(prompt):].numpy().astype(np.int32)
    if len(new) != NEW_TOKENS:
        sys.exit(f"greedy continuation stopped early at an eos token ({new}); change the seed")
    top2 = [torch.topk(step[0], 2).values for step in out.logits]
    margin = min(float(v[0] - v[1]) for v in top2)
    return new, margin


def write_outputs(model: torch.nn.Module, out_dir: Path, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    arrays = {}
    for T in LENGTHS:
        tokens = rng.integers(0, vocab, T, dtype=np.int32)
        arrays[f"tokens_{T}"] = tokens
        arrays[f"logits_{T}"] = logits_of(model, tokens)
    prompt = rng.integers(0, vocab - len(EOS), PROMPT_LEN, dtype=np.int32)  # EOS are the last ids
    arrays["prompt"] = prompt
    arrays["greedy"], margin = greedy(model, prompt)
    if margin < 1e-3:
        sys.exit(f"{out_dir.name}: greedy top-2 margin {margin:.2e} too small for a stable test; "
                 "change the seed")
    np.savez_compressed(out_dir / "hf_outputs.npz", **arrays)
    return {"greedy_min_margin": margin}


def versions() -> dict:
    return {"transformers": transformers.__version__, "torch": torch.__version__,
            "safetensors": safetensors.__version__, "python": sys.version.split()[0]}


def write_fixture(name: str, model: torch.nn.Module, seed: int, **save_kwargs) -> Path:
    out_dir = FIXTURES / name
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir, **save_kwargs)
    info = {"name": name, "class": type(model).__name__, "seed": seed, **versions(),
            "lengths": list(LENGTHS), "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS}
    info |= write_outputs(model, out_dir, seed)
    (out_dir / "fixture.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def build(make, seed: int) -> tuple[torch.nn.Module, torch.Generator]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make().to(torch.float32)
    model.set_attn_implementation("eager")  # the plain softmax, not a fused kernel
    redraw_weights(model, gen)
    return model.eval(), gen


# --- the MXFP4 copy of tiny-gpt-oss -------------------------------------------------------------

def write_mxfp4_copy(src: Path, packed: dict[str, torch.Tensor], reference: np.ndarray) -> None:
    """tests/fixtures/tiny-gpt-oss-mxfp4: src's checkpoint with the expert matrices replaced by
    their packed MXFP4 tensors; checked by loading it back with transformers (dequantize=True)."""
    dst = FIXTURES / "tiny-gpt-oss-mxfp4"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    tensors = {k: v for k, v in load_file(src / "model.safetensors").items()
               if not k.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    save_file(tensors | packed, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                   "model.embed_tokens", "lm_head"]}
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    info = {"name": dst.name, "same_model_as": src.name, **versions()}
    (dst / "fixture.json").write_text(json.dumps(info, indent=2) + "\n")

    again = GptOssForCausalLM.from_pretrained(dst, dtype=torch.float32, attn_implementation="eager",
                                              quantization_config=Mxfp4Config(dequantize=True)).eval()
    tokens = np.load(src / "hf_outputs.npz")["tokens_257"]
    err = np.abs(logits_of(again, tokens) - reference).max()
    if err > 0:
        sys.exit(f"transformers reads {dst.name} differently from {src.name}: max abs logit error {err}")


def write_mxfp4_golden(seed: int) -> None:
    """Random packed tensors over the E8M0 exponents 0..254 (the extremes included: 2^-127 is
    subnormal, 6 * 2^127 overflows) and transformers' output."""
    gen = torch.Generator().manual_seed(seed)
    blocks, scales = random_mxfp4(gen, (3, 5), 64, 0, 254)
    scales.view(-1)[:4] = torch.tensor([0, 1, 253, 254], dtype=torch.uint8)
    dense = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)
    np.savez_compressed(FIXTURES / "mxfp4_golden.npz", blocks=blocks.numpy(), scales=scales.numpy(),
                        dequantized=dense.to(torch.float32).numpy())


def main() -> None:
    torch.set_grad_enabled(False)
    FIXTURES.mkdir(parents=True, exist_ok=True)

    model, _ = build(qwen3_moe_model, seed=1)
    write_fixture("tiny-qwen3-moe", model, seed=1)

    model, gen = build(gpt_oss_model, seed=2)
    packed = mxfp4_experts(model, gen)
    src = write_fixture("tiny-gpt-oss", model, seed=2)
    write_mxfp4_copy(src, packed, logits_of(model, np.load(src / "hf_outputs.npz")["tokens_257"]))

    model, _ = build(qwen3_model, seed=3)
    write_fixture("tiny-qwen3", model, seed=3, max_shard_size="300KB")

    write_mxfp4_golden(seed=4)
    print(f"fixtures written to {FIXTURES} with transformers {transformers.__version__}, "
          f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
