"""Layered prefill of a prompt longer than the cohort cap: alone, in one pass through the layers
(G = ceil(tokens / group_tokens) groups), unless max_lone_prompt_tokens asks for the paper's
chunks; sized in the row buckets, the hidden buffer and the memory plan, refused clearly."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import lp_jax
from lp_jax.engine.config import EngineConfig
from lp_jax.engine.memory import GIB, plan_num_pages, workspace_bytes
from lp_jax.model.config import QWEN3_30B_A3B
from tests.engine_helpers import preset_model, reference_greedy, run_with_arrivals

CAP, GROUP_TOKENS, CONTEXT, MAX_TOKENS = 64, 64, 256, 3
LONG = 160  # 2.5 x the cohort cap
# One row bucket, the largest call (a lone prompt of up to L x group_tokens = 256 tokens beside 4
# decodes): every call pads to it, so each routing profile compiles one step per layer count.
ENGINE = dict(max_model_len=CONTEXT, max_num_seqs=4, max_prefill_tokens=CAP, max_cohort_tokens=CAP,
              group_tokens=GROUP_TOKENS, row_buckets=(260,), trace=True)


def model():
    return preset_model("tiny-qwen3-moe", seed=4)


def prompts(vocab):
    rng = np.random.default_rng(2)
    return [[int(t) for t in rng.integers(0, vocab, n)] for n in (5, LONG, 30)]


@functools.cache
def served(**options):
    cfg, params = model()
    llm = lp_jax.LLM(cfg, "layered", params=params, **(ENGINE | options))
    outs = run_with_arrivals(llm, prompts(cfg.vocab_size), [0, 1, 1], max_tokens=MAX_TOKENS)
    return llm, outs


def layer_calls(llm, request_id):
    """How many calls ran the request's prefill rows through each layer, and its prefill works
    [(start, end, layers)]."""
    L = llm.model_config.num_layers
    calls, works = np.zeros(L, int), []
    for rec in llm.engine.records:
        lo, hi = rec.prefill_layers
        for rid, start, end in rec.prefill:
            if rid == request_id:
                calls[lo:hi] += 1
                works.append((start, end, (lo, hi)))
    return calls, works


def test_lone_prompt_of_2_5x_the_cap_passes_each_layer_once():
    llm, outs = served()
    assert llm.engine_config.max_lone_prompt_tokens == 4 * GROUP_TOKENS  # L x group_tokens
    long = outs[1]
    calls, works = layer_calls(llm, long.request_id)
    print(f"{LONG}-token prompt, cohort cap {CAP}: calls per layer {calls.tolist()}, works {works}")
    assert (calls == 1).all(), calls
    # Alone, whole, in G = ceil(160 / 64) = 3 groups of the 4 layers.
    assert [w[:2] for w in works] == [(0, LONG)] * 3
    assert [w[2] for w in works] == [(0, 1), (1, 2), (2, 4)]
    cfg, params = model()
    for out, prompt in zip(outs, prompts(cfg.vocab_size)):
        assert out.token_ids == reference_greedy(cfg, params, prompt, MAX_TOKENS, CONTEXT)


def test_paper_cap_chunks_the_long_prompt_and_each_chunk_passes_every_layer():
    llm, outs = served(max_lone_prompt_tokens=CAP)
    calls, works = layer_calls(llm, outs[1].request_id)
    assert (calls == 3).all(), calls  # chunks of 64, 64 and 32 tokens, each through every layer
    assert sorted({w[:2] for w in works}) == [(0, 64), (64, 128), (128, 160)]
    cfg, params = model()
    assert outs[1].token_ids == reference_greedy(cfg, params, prompts(cfg.vocab_size)[1], MAX_TOKENS, CONTEXT)


def test_one_pass_reads_the_long_prompts_experts_once():
    one_pass, chunked = served(routing="qwen3-paper")[1][1], served(routing="qwen3-paper", max_lone_prompt_tokens=CAP)[1][1]
    print(f"{LONG}-token prompt, qwen3-paper: one pass / the paper's {CAP}-token chunks, expert bytes "
          f"distinct {one_pass.expert_bytes / chunked.expert_bytes:.3f}, "
          f"streamed {one_pass.expert_streamed_bytes / chunked.expert_streamed_bytes:.3f}")
    assert one_pass.expert_bytes < chunked.expert_bytes
    assert one_pass.expert_streamed_bytes <= chunked.expert_streamed_bytes


def test_rows_and_memory_are_sized_for_the_lone_prompt():
    cfg = EngineConfig().for_model(QWEN3_30B_A3B)
    assert cfg.max_lone_prompt_tokens == 48 * 512
    assert cfg.buckets()[-3:] == (8256, 16384, 24640) and cfg.hidden_rows() == 64 + 24576 + 1
    paper = EngineConfig(max_lone_prompt_tokens=8192).for_model(QWEN3_30B_A3B)
    assert paper.buckets()[-1] == 8256 and paper.hidden_rows() == 8257
    extra = workspace_bytes(QWEN3_30B_A3B, cfg, "bfloat16") - workspace_bytes(QWEN3_30B_A3B, paper, "bfloat16")
    assert 2 * GIB < extra < 6 * GIB  # a 24640-row call's activations and a 24641-row hidden buffer
    # 57 GiB of weights + 5.2 GiB of workspace + 3 GiB for one 32768-token sequence > 64 GiB: refused,
    # naming the option; with the paper's cap (2.5 GiB of workspace) the same engine fits.
    with pytest.raises(ValueError, match="max_lone_prompt_tokens \\(now 24576"):
        plan_num_pages(QWEN3_30B_A3B, EngineConfig(max_model_len=32768), "bfloat16", available=64 * GIB)
    assert plan_num_pages(QWEN3_30B_A3B, EngineConfig(max_model_len=32768, max_lone_prompt_tokens=8192), "bfloat16",
                          available=64 * GIB) > 2048
    with pytest.raises(ValueError, match="lower it to chunk long prompts"):
        EngineConfig(max_lone_prompt_tokens=16384, row_buckets=(64, 8256)).buckets()
    with pytest.raises(ValueError, match="must be >= max_cohort_tokens"):
        EngineConfig(max_lone_prompt_tokens=100)
