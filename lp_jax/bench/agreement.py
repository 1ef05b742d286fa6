"""Greedy outputs of the engine on one device against another's (scripts/check_engine_gpu.py: bf16
on the GPU with the Pallas kernels where the shapes allow, against CPU float32), for the tiny
presets and the three schedules.

Two agreements. Free-running: share of output tokens equal at the same position when each side
continues its own text (one flipped near-tie changes the rest of that request). Teacher-forced:
for every position k of every request, the engine is given the prompt plus the other side's first
k tokens and asked for one token; share equal to that side's token k (no cascade).
"""

from __future__ import annotations

import dataclasses

import numpy as np

import lp_jax
from lp_jax.model import init_params
from lp_jax.model.config import get_preset

# The tiny presets' head dim (16) is below what the attention kernel tiles, so two variants with
# head dim 64 and 8 query heads per KV head run the engine through the Pallas attention kernel too
# (the GPT-OSS one with its sinks and sliding window).
ATTENTION_VARIANTS = {f"{base}-hd64": base for base in ("tiny-qwen3-moe", "tiny-gpt-oss")}
PRESETS = ["tiny-qwen3-moe", "tiny-gpt-oss", "tiny-qwen3", *ATTENTION_VARIANTS]
SCHEDULES = ["prefill_first", "chunked", "layered"]
NUM_REQUESTS, MAX_TOKENS, CONTEXT, SEED = 32, 8, 640, 17
ENGINE = dict(max_model_len=CONTEXT, max_num_seqs=32, max_prefill_tokens=256, max_cohort_tokens=256, token_budget=128,
              row_buckets=(32, 128, 288))


def prompts_for(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(SEED)
    return [[int(t) for t in rng.integers(0, vocab, n)] for n in rng.integers(1, 601, NUM_REQUESTS)]


def model_config(name: str):
    if name in ATTENTION_VARIANTS:
        return dataclasses.replace(get_preset(ATTENTION_VARIANTS[name]), name=name, head_dim=64, num_heads=8,
                                   num_kv_heads=1)
    return get_preset(name)


def make_llm(name: str, schedule: str, dtype: str, backend: str | None = None):
    cfg = model_config(name)
    params = init_params(cfg, seed=SEED, dtype=dtype, stacked=True)
    return lp_jax.LLM(cfg, schedule, params=params, dtype=dtype, backend=backend, num_groups=3, **ENGINE)


def serve(llm) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts_for(llm.model_config.vocab_size), max_tokens=MAX_TOKENS)]


def teacher_forced(llm, expected: list[list[int]]) -> float:
    prompts = prompts_for(llm.model_config.vocab_size)
    forced = [p + e[:k] for p, e in zip(prompts, expected) for k in range(len(e))]
    got = [o.token_ids[0] for o in llm.generate(forced, max_tokens=1)]
    want = [t for e in expected for t in e]
    return sum(g == w for g, w in zip(got, want)) / len(want)


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    return same / sum(len(r) for r in a)
