"""Reliability: random workloads (hypothesis) end every request in a known state with outputs that
depend on neither schedule, batch composition nor preemption; aborts inside a layered cohort; a
scaled soak run (the full one is scripts/soak.py)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lp_jax
from lp_jax.bench.soak import run_soak
from tests.engine_helpers import preset_model, reference_greedy

CONTEXT = 128
MAX_TOKENS = 6
# One row bucket, the largest call (a 64-token cohort beside 8 decodes): each pool size compiles
# one step per layer count.
ENGINE = dict(max_model_len=CONTEXT, max_num_seqs=8, max_prefill_tokens=64, max_cohort_tokens=64, token_budget=40,
              row_buckets=(72,))


def tiny():
    return preset_model("tiny-gpt-oss", seed=9)


@functools.cache
def expected(prompt: tuple[int, ...]) -> list[int]:
    cfg, params = tiny()
    return reference_greedy(cfg, params, list(prompt), MAX_TOKENS, CONTEXT)


request_st = st.fixed_dictionaries({
    "length": st.integers(1, 100),
    "max_tokens": st.integers(1, MAX_TOKENS),
    "arrival": st.integers(0, 12),
    "abort_at": st.none() | st.integers(0, 20),
    "stop_index": st.none() | st.integers(0, MAX_TOKENS - 1),  # stop on the reference's token there
    "invalid": st.sampled_from([None, None, None, None, "empty", "vocab", "too_long"]),
})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=st.sampled_from(["prefill_first", "chunked", "layered"]),
       tight_pool=st.booleans(), num_groups=st.integers(1, 4),
       requests=st.lists(request_st, min_size=1, max_size=7), seed=st.integers(0, 2**16))
def test_every_request_ends_in_a_known_state(schedule, tight_pool, num_groups, requests, seed):
    cfg, params = tiny()
    rng = np.random.default_rng(seed)
    # A tight pool (8 usable pages = 128 tokens) holds one long request: preemption is frequent.
    llm = lp_jax.LLM(cfg, schedule, params=params, num_pages=9 if tight_pool else None,
                     num_groups=num_groups, **ENGINE)
    prompts = [[int(t) for t in rng.integers(0, cfg.vocab_size, r["length"])] for r in requests]
    ids, wanted, rejected, aborted, done = {}, {}, set(), set(), {}
    order = sorted(range(len(requests)), key=lambda i: requests[i]["arrival"])
    k, step = 0, 0
    while k < len(order) or llm.has_unfinished():
        while k < len(order) and requests[order[k]]["arrival"] <= step:
            i = order[k]
            k += 1
            r, prompt = requests[i], prompts[i]
            ref = expected(tuple(prompt))[:r["max_tokens"]]
            stop = () if r["stop_index"] is None or r["stop_index"] >= len(ref) else (ref[r["stop_index"]],)
            if stop:
                ref = ref[:ref.index(stop[0]) + 1]
            bad = {"empty": [], "vocab": prompt[:-1] + [cfg.vocab_size], "too_long": [1] * CONTEXT}.get(r["invalid"])
            try:
                rid = llm.add_request(prompt if bad is None else bad, max_tokens=r["max_tokens"],
                                      stop_token_ids=stop)
            except ValueError as e:
                assert bad is not None, f"valid request {i} rejected: {e}"
                assert str(e)
                rejected.add(i)
                continue
            assert bad is None, f"invalid request {i} ({r['invalid']}) accepted"
            ids[rid], wanted[i] = i, ref
        for rid, i in list(ids.items()):
            if requests[i]["abort_at"] == step and i not in done and llm.abort(rid):
                aborted.add(i)
        for out in llm.step():
            assert out.status == "finished"
            done[ids[out.request_id]] = out.token_ids
        step += 1
    assert set(done) | aborted | rejected == set(range(len(requests))), "a request was lost"
    assert not set(done) & aborted
    for i, tokens in done.items():
        assert tokens == wanted[i], f"request {i}: {tokens} != reference {wanted[i]}"
    assert llm.engine.blocks.all_free()
    assert not llm.engine.requests  # nothing kept for ended requests


def test_abort_inside_a_layered_cohort_spares_the_rest_of_the_cohort():
    cfg, params = tiny()
    rng = np.random.default_rng(1)
    prompts = [[int(t) for t in rng.integers(0, cfg.vocab_size, n)] for n in (20, 30, 10)]
    llm = lp_jax.LLM(cfg, "layered", params=params, num_groups=4, trace=True, **ENGINE)
    ids = [llm.add_request(p, max_tokens=MAX_TOKENS) for p in prompts]
    llm.step()
    llm.step()  # the cohort of all three is now at group 2 of 4
    (cohort,) = llm.engine.scheduler.cohorts
    assert len(cohort.works) == 3 and cohort.next_layer == cohort.groups[2][0]
    assert llm.abort(ids[1])
    done = {}
    while llm.has_unfinished():
        for out in llm.step():
            done[out.request_id] = out
    assert set(done) == {ids[0], ids[2]}
    for i in (0, 2):
        assert done[ids[i]].token_ids == expected(tuple(prompts[i]))
    first_token_iteration = {rec.end_s: rec.iteration for rec in llm.engine.records}[done[ids[0]].token_times_s[0]]
    assert first_token_iteration == 3  # admitted in iteration 0, G = 4: not delayed by the abort
    assert llm.engine.blocks.all_free()


@pytest.mark.parametrize("schedule", ["chunked", "layered"])
def test_scaled_soak(schedule):
    # Three row buckets (decodes alone, chunked's budget, layered's largest cohort): serving moves
    # between precompiled shapes and must compile none; 64 rows would only save some padding.
    llm = lp_jax.LLM("tiny-qwen3-moe", schedule, max_model_len=256, max_num_seqs=16, max_prefill_tokens=256,
                     max_cohort_tokens=256, token_budget=128, num_pages=16, row_buckets=(16, 128, 272))
    report = run_soak(llm, 300, seed=3, arrivals_per_step=1.5, rss_every=25)
    print(report.as_dict())
    assert report.lost == 0 and report.wrong_length == 0
    assert report.finished + report.aborted + report.rejected == 300
    assert report.aborted > 0 and report.rejected > 0 and report.preemptions > 0
    assert report.leaked_pages == 0
    assert report.compiles_while_serving == 0
