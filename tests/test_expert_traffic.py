"""The paper's claim on the CPU: arXiv-long-shaped prompts (lengths scaled by 1/8) under the
calibrated routing on a layer of 128 experts, layered prefill against chunked-512, expert bytes
per request both ways; and both counts in the bench reports."""

from __future__ import annotations

import functools

import numpy as np

import lp_jax
from lp_jax.bench.workload import make_workload
from tests.engine_helpers import preset_model, run_with_arrivals

CONTEXT = 2048
# One hidden buffer and bucket ladder for both schedules, so they share their whole-model steps.
ENGINE = dict(max_model_len=CONTEXT, max_num_seqs=8, max_prefill_tokens=1024, max_cohort_tokens=1024,
              row_buckets=(8, 520, 1032, 2056), routing="qwen3-paper")


@functools.cache
def served(schedule):
    cfg, params = preset_model("tiny-qwen3-moe-e128", seed=1)
    # Five prompts of 532-1222 tokens: every one is longer than a chunk.
    work = make_workload("arxiv-long", 5, rate=float("inf"), seed=1, length_scale=1 / 8, context_limit=CONTEXT)
    options = dict(token_budget=512) if schedule == "chunked" else dict(group_tokens=512)
    llm = lp_jax.LLM(cfg, schedule, params=params, **ENGINE, **options)
    outs = run_with_arrivals(llm, work.prompts(cfg.vocab_size), [0, 1, 2, 3, 4], max_tokens=4, ignore_eos=True)
    return work, outs


def test_layered_reads_fewer_expert_bytes_per_request_than_chunked_512():
    work, layered = served("layered")
    _, chunked = served("chunked")
    per_request = {k: np.array([a.__dict__[k] / b.__dict__[k] for a, b in zip(layered, chunked)])
                   for k in ("expert_bytes", "expert_streamed_bytes")}
    print(f"arxiv-long x1/8, prompts {work.prompt_tokens.tolist()} tokens, tiny-qwen3-moe-e128, qwen3-paper: "
          f"layered / chunked-512 expert bytes per request, distinct {per_request['expert_bytes'].round(3).tolist()} "
          f"(mean {per_request['expert_bytes'].mean():.3f}), streamed "
          f"{per_request['expert_streamed_bytes'].round(3).tolist()} (mean {per_request['expert_streamed_bytes'].mean():.3f})")
    # Every prompt is longer than one chunk, where chunked re-reads experts (the 532-token one barely:
    # its second chunk of 20 tokens rides with other requests' rows, so it saves ~nothing).
    assert (work.prompt_tokens > 512).all()
    assert per_request["expert_bytes"].mean() < 0.8 and per_request["expert_streamed_bytes"].mean() < 0.9
    assert (per_request["expert_bytes"][work.prompt_tokens > 1.5 * 512] < 0.9).all()
    assert [a.token_ids for a in layered] == [b.token_ids for b in chunked]  # same outputs either way
