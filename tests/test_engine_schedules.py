"""The three schedules on the tiny models: same greedy outputs as a plain reference decoder, and
the invariants that define each schedule (stall-free decoding, layer passes, budgets, pages)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import lp_jax
from tests.engine_helpers import preset_model, reference_greedy, reference_routing, run_with_arrivals

MODELS = ["tiny-qwen3-moe", "tiny-gpt-oss", "tiny-qwen3"]
SCHEDULES = ["prefill_first", "chunked", "layered"]
NUM_REQUESTS, MAX_TOKENS, CONTEXT = 32, 5, 640
CAP = 256  # layered cohort cap and prefill_first's per-iteration prefill tokens
BUDGET = 96  # chunked token budget
ENGINE = dict(max_model_len=CONTEXT, max_num_seqs=16, max_prefill_tokens=CAP, max_cohort_tokens=CAP,
              token_budget=BUDGET, row_buckets=(16, 128, 272), trace=True)


@functools.cache
def workload(vocab: int):
    rng = np.random.default_rng(7)
    lengths = list(rng.integers(1, 601, NUM_REQUESTS))
    lengths[:4] = [1, 600, CAP + 1, 2 * CAP + 37]  # the edges: one token, the longest, just over the cap
    prompts = [[int(t) for t in rng.integers(0, vocab, n)] for n in lengths]
    arrivals = sorted(int(a) for a in rng.integers(0, 40, NUM_REQUESTS))
    return prompts, arrivals


def model(name):
    return preset_model(name, seed=3)


@functools.cache
def served(name, schedule):
    cfg, params = model(name)
    prompts, arrivals = workload(cfg.vocab_size)
    llm = lp_jax.LLM(cfg, schedule, params=params, num_groups=3 if schedule == "layered" else None, **ENGINE)
    outs = run_with_arrivals(llm, prompts, arrivals, max_tokens=MAX_TOKENS)
    # The compile counter is process-wide: read it before other tests compile anything.
    llm.compiles_while_serving = llm.engine.compiles_since_startup()
    return llm, outs


@functools.cache
def expected(name):
    """The reference decoder's tokens for every prompt, drafted by chunked's outputs (a draft
    saves forwards, never changes the result)."""
    cfg, params = model(name)
    prompts, _ = workload(cfg.vocab_size)
    _, drafts = served(name, "chunked")
    return [reference_greedy(cfg, params, p, MAX_TOKENS, CONTEXT, draft=d.token_ids) for p, d in zip(prompts, drafts)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_greedy_outputs_equal_reference_decoder(name, schedule):
    _, outs = served(name, schedule)
    got = [o.token_ids for o in outs]
    want = expected(name)
    mismatched = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not mismatched, f"{schedule}: requests {mismatched} differ from the reference decoder"
    assert all(o.status == "finished" for o in outs)


@pytest.mark.parametrize("kind", ["wrong", "third_wrong", "right"])
def test_reference_decoder_gives_the_same_tokens_whatever_its_draft(kind):
    """Without a draft the reference decoder is the plain loop, one forward per token; a draft
    (all wrong, right but for its third token, right) must not change a token."""
    cfg, params = model("tiny-qwen3-moe")
    prompt = workload(cfg.vocab_size)[0][1][:20]
    plain = reference_greedy(cfg, params, prompt, MAX_TOKENS, CONTEXT)
    draft = {"wrong": [(t + 1) % cfg.vocab_size for t in plain],
             "third_wrong": plain[:2] + [(plain[2] + 1) % cfg.vocab_size] + plain[3:], "right": plain}[kind]
    assert reference_greedy(cfg, params, prompt, MAX_TOKENS, CONTEXT, draft=draft) == plain


def _iteration_of(llm):
    """Map an emission time to the iteration that emitted it."""
    return {rec.end_s: rec.iteration for rec in llm.engine.records}


@pytest.mark.parametrize("schedule", ["chunked", "layered"])
def test_stall_free_every_decode_emits_every_iteration(schedule):
    llm, outs = served("tiny-qwen3-moe", schedule)
    it = _iteration_of(llm)
    for o in outs:
        steps = [it[t] for t in o.token_times_s]
        assert steps == list(range(steps[0], steps[0] + len(steps))), f"request {o.request_id} stalled: {steps}"
        assert o.num_preemptions == 0


def test_prefill_first_stalls_decodes():
    # The baseline must really stall: some request waits more than one iteration between tokens.
    llm, outs = served("tiny-qwen3-moe", "prefill_first")
    it = _iteration_of(llm)
    gaps = []
    for o in outs:
        steps = [it[t] for t in o.token_times_s]
        gaps += [b - a for a, b in zip(steps, steps[1:])]
    assert max(gaps) > 1


@pytest.mark.parametrize("name", MODELS)
def test_layered_every_prompt_token_passes_every_layer_once(name):
    llm, outs = served(name, "layered")
    L = llm.model_config.num_layers
    passes: dict[tuple[int, int], np.ndarray] = {}
    for rec in llm.engine.records:
        lo, hi = rec.prefill_layers
        for rid, start, end in rec.prefill:
            for p in range(start, end):
                passes.setdefault((rid, p), np.zeros(L, int))[lo:hi] += 1
    for o in outs:
        for p in range(len(o.prompt_token_ids)):
            counts = passes.get((o.request_id, p))
            assert counts is not None and (counts == 1).all(), f"request {o.request_id} token {p}: {counts}"


def test_layered_first_token_exactly_G_iterations_after_admission():
    llm, outs = served("tiny-qwen3-moe", "layered")
    G = 3
    it = _iteration_of(llm)
    admitted = {}
    for rec in llm.engine.records:
        for rid, start, _ in rec.prefill:
            if start == 0:
                admitted.setdefault(rid, rec.iteration)
    for o in outs:
        if len(o.prompt_token_ids) <= CAP:
            first = it[o.token_times_s[0]]
            assert first - admitted[o.request_id] + 1 == G, (o.request_id, admitted[o.request_id], first)


def test_layered_groups_are_contiguous_and_even():
    llm, _ = served("tiny-qwen3-moe", "layered")
    ranges = {rec.prefill_layers for rec in llm.engine.records if rec.prefill}
    assert ranges == {(0, 1), (1, 2), (2, 4)}


def test_chunked_prefill_tokens_never_exceed_budget():
    llm, _ = served("tiny-qwen3-moe", "chunked")
    for rec in llm.engine.records:
        prefill = sum(end - start for _, start, end in rec.prefill)
        assert prefill + len(rec.decode_ids) <= BUDGET


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_all_pages_free_and_nothing_compiled_after_startup(schedule):
    llm, _ = served("tiny-gpt-oss", schedule)
    assert llm.engine.blocks.all_free()
    assert llm.compiles_while_serving == 0


@pytest.mark.parametrize("schedule", ["chunked", "layered"])
def test_expert_counts_equal_recount_from_reference_routing(schedule):
    """Distinct experts per layer of every call, recounted from the routing decisions an
    independent full-sequence forward makes for the same tokens."""
    name = "tiny-qwen3-moe"
    cfg, params = model(name)
    llm, outs = served(name, schedule)
    routing = {o.request_id: reference_routing(cfg, params, o.prompt_token_ids + o.token_ids, CONTEXT)
               for o in outs}
    bytes_per_expert = cfg.expert_params() * 4
    total = 0
    for rec in llm.engine.records:
        for seg in rec.segments:
            for layer in range(seg.layer_lo, seg.layer_hi):
                experts = set()
                for rid, pos in seg.row_tokens:
                    experts.update(routing[rid][layer, pos].tolist())
                assert seg.expert_counts_L[layer] == len(experts), (rec.iteration, layer)
                total += len(experts) * bytes_per_expert
    assert total == pytest.approx(llm.engine.total_expert_bytes)
    assert sum(o.expert_bytes for o in outs) == pytest.approx(total)


def test_layered_reads_fewer_expert_bytes_than_chunked_on_long_prompts():
    """The paper's claim, scaled to this file's engines (chunked budget 96, layered cap 256, G = 3):
    chunked re-reads every layer's experts for every chunk of a prompt, layered once per group.
    The served workload's long prompts (up to 600 tokens) span up to 7 chunks. At the paper's
    512-token budget: test_expert_traffic and test_long_prompts."""
    spent = {s: served("tiny-qwen3-moe", s)[0].engine.total_expert_bytes for s in ("chunked", "layered")}
    ratio = spent["layered"] / spent["chunked"]
    print(f"expert bytes, {NUM_REQUESTS} prompts of 1-600 tokens, tiny-qwen3-moe: layered {spent['layered'] / 1e6:.2f} "
          f"MB, chunked (budget {BUDGET}) {spent['chunked'] / 1e6:.2f} MB, layered/chunked = {ratio:.3f}")
    assert ratio < 1.0
