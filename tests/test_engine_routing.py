"""Calibrated routing in the engine: a request's experts and outputs do not depend on the
schedule or the batch, the engine counts what the sampler predicts, and bad requests for a
profile are refused."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lp_jax
from lp_jax.model import reference_forward
from lp_jax.model.routing import QWEN3_PAPER, count_distinct, sampled_ids
from pallas_kernels.dispatch import moe_block_m
from tests.engine_helpers import preset_model, run_with_arrivals

NAME = "tiny-qwen3-moe"
MAX_TOKENS, CONTEXT = 4, 192
ENGINE = dict(max_model_len=CONTEXT, max_num_seqs=8, max_prefill_tokens=64, max_cohort_tokens=64, token_budget=24,
              row_buckets=(24, 72), routing="qwen3-paper", trace=True)


def model():
    return preset_model(NAME, seed=3)


def prompts(vocab):
    rng = np.random.default_rng(11)
    return [[int(t) for t in rng.integers(0, vocab, n)] for n in (1, 40, 17, 64, 9, 30)]


@functools.cache
def served(schedule):
    cfg, params = model()
    llm = lp_jax.LLM(cfg, schedule, params=params, num_groups=2 if schedule == "layered" else None, **ENGINE)
    ps = prompts(cfg.vocab_size)
    outs = run_with_arrivals(llm, ps, [0, 0, 1, 2, 2, 5], max_tokens=MAX_TOKENS)
    # The compile counter is process-wide: read it before other tests compile anything.
    llm.compiles_while_serving = llm.engine.compiles_since_startup()
    return llm, outs


@functools.cache
def _reference(config, length):
    return jax.jit(lambda params, tokens, seed: reference_forward(config, params, tokens, routing=QWEN3_PAPER,
                                                                  routing_seed=seed))


@functools.cache
def reference_greedy(prompt: tuple, seed: int) -> list[int]:
    """Greedy tokens of the reference forward routing every position by (seed, layer, position)."""
    cfg, params = model()
    fwd = _reference(cfg, CONTEXT)
    seq = list(prompt)
    for _ in range(MAX_TOKENS):
        tokens = np.zeros(CONTEXT, np.int32)
        tokens[:len(seq)] = seq
        seq.append(int(jnp.argmax(fwd(params, tokens, seed)[0][len(seq) - 1])))
    return seq[len(prompt):]


def routing_seed(llm, request_id):
    """The seed the engine gave a request (engine seed 0): the same formula as Engine.add_request."""
    import zlib
    return zlib.crc32(f"routing:{llm.engine_config.seed}:{request_id}".encode()) & 0x7FFFFFFF


@pytest.mark.parametrize("schedule", ["prefill_first", "chunked", "layered"])
def test_outputs_follow_the_profile_under_every_schedule(schedule):
    llm, outs = served(schedule)
    cfg, _ = model()
    for out, prompt in zip(outs, prompts(cfg.vocab_size)):
        assert out.token_ids == reference_greedy(tuple(prompt), routing_seed(llm, out.request_id))
    assert llm.compiles_while_serving == 0


@pytest.mark.parametrize("schedule", ["prefill_first", "chunked", "layered"])
def test_engine_counts_the_experts_and_tiles_the_sampler_routes(schedule):
    """Every call's distinct experts and row tiles per layer, recomputed from its rows'
    (request seed, position) with the sampler alone: under every schedule, whatever the batch a
    row rides in, it gets the experts its request and position choose."""
    llm, _ = served(schedule)
    cfg, _ = model()
    E, K, L = cfg.num_experts, cfg.num_experts_per_tok, cfg.num_layers
    checked = 0
    for rec in llm.engine.records:
        for seg in rec.segments:
            seeds = [routing_seed(llm, rid) for rid, _ in seg.row_tokens]
            pos = [p for _, p in seg.row_tokens]
            bucket = next(b for b in llm.engine.executor.buckets if b >= len(seeds))
            # Each row's ids depend on its own (seed, position) alone: padded to the bucket, the
            # sampler compiles once per bucket instead of once per row count.
            pad = bucket - len(seeds)
            ids = sampled_ids(QWEN3_PAPER, E, K, L, seeds + [0] * pad, pos + [0] * pad)[:, :len(seeds)]
            rows = np.stack([np.bincount(ids[l].ravel(), minlength=E) for l in range(L)])
            block_m = moe_block_m(E, cfg.hidden_size, cfg.ffn_size, bucket * K)
            lo, hi = seg.layer_lo, seg.layer_hi
            np.testing.assert_array_equal(seg.expert_counts_L[lo:hi], count_distinct(ids, E)[lo:hi])
            np.testing.assert_array_equal(seg.expert_tiles_L[lo:hi], np.sum(-(-rows // block_m), axis=1)[lo:hi])
            checked += 1
    assert checked >= len(llm.engine.records) > 5  # every iteration, at least one call each


def test_bytes_are_accounted_both_ways():
    llm, outs = served("layered")
    assert all(o.expert_streamed_bytes >= o.expert_bytes > 0 for o in outs)
    records = llm.engine.records
    assert llm.engine.total_expert_bytes == pytest.approx(sum(r.expert_bytes for r in records))
    assert llm.engine.total_expert_streamed_bytes == pytest.approx(sum(r.expert_streamed_bytes for r in records))
    # Every request's share adds up to the iterations' totals (no request was aborted).
    assert sum(o.expert_bytes for o in outs) == pytest.approx(llm.engine.total_expert_bytes)


def test_routing_is_refused_where_it_cannot_apply(tmp_path):
    with pytest.raises(ValueError, match="known profiles: uniform, qwen3-paper"):
        lp_jax.LLM("tiny-qwen3-moe", routing="zipf")
    with pytest.raises(ValueError, match="tiny-qwen3 is a dense model"):
        lp_jax.LLM("tiny-qwen3", routing="qwen3-paper", max_model_len=64)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="a checkpoint routes with its trained router"):
        lp_jax.LLM(str(tmp_path), routing="qwen3-paper")
