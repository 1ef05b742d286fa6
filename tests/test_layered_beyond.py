"""Layered prefill beyond the paper (issue 19): pipelined cohorts and adaptive groups, on the tiny
models, with the same checks as the other schedules (greedy outputs equal the reference decoder,
every prompt token through every layer once, stall-free decodes, no page leaks, nothing compiled
while serving, aborts, preemption) and the invariants of their own (cohorts really overlap, the
iteration budget holds, groups follow the cost model)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import lp_jax
from lp_jax.engine.config import EngineConfig
from tests.engine_helpers import drain_and_check_aborted, reference_greedy, run_with_arrivals
from tests.test_engine_api import CONTEXT as API_CONTEXT
from tests.test_engine_api import ENGINE as API_ENGINE
from tests.test_engine_api import make_llm, prompts_of, tiny
from tests.test_engine_schedules import CAP, CONTEXT, ENGINE, MAX_TOKENS, MODELS, model

NUM_REQUESTS = 24


@functools.cache
def workload(vocab: int):
    """Mostly short prompts (a cohort of them leaves room in the prefill region for the next),
    arriving over 30 iterations, and the edges: one token, the longest, just over the cap."""
    rng = np.random.default_rng(8)
    lengths = list(rng.integers(1, 100, NUM_REQUESTS))
    lengths[:4] = [1, 600, CAP + 1, CAP // 2 + 3]
    prompts = [[int(t) for t in rng.integers(0, vocab, n)] for n in lengths]
    arrivals = sorted(int(a) for a in rng.integers(0, 30, NUM_REQUESTS))
    return prompts, arrivals


# A cost model that is linear in the rows and layers of a plan: an iteration's predicted seconds
# = 1 ms + 2 us per decode row x layer + 1 us per prompt row x layer. With TARGET_S a cohort of
# n prompt tokens beside d decodes gets floor((TARGET_S - 1 ms - 2 us x d x L) / (1 us x n))
# layers (on these 4-layer models: a 256-token cohort 1, a 64-token one up to 4), so tests
# can say which groups adaptive must choose.
TARGET_S = 0.0013
ABORT_TARGET_S = 0.00113
DECODE_S, PROMPT_S = 2e-6, 1e-6


def linear_predict_s(plan) -> float:
    L = plan.num_layers
    return 1e-3 + DECODE_S * len(plan.decodes) * L + PROMPT_S * sum(
        w.num_tokens * (plan.layers_of(w)[1] - plan.layers_of(w)[0]) for w in plan.prefills)


VARIANTS = {
    "pipelined": dict(num_groups=3, pipelined=True),
    "adaptive": dict(group_rule="adaptive", iteration_target_s=TARGET_S),
    "adaptive_pipelined": dict(group_rule="adaptive", iteration_target_s=TARGET_S, pipelined=True),
}


def options_of(variant: str, cohort_cap: int) -> dict:
    """The variant's options; pipelined ones with a prefill region of cohort_cap rows, half that of
    the engine they are given to (cohorts, lone prompts and prefill_first's prefills of at most
    cohort_cap tokens; its chunked budget must not exceed it). Pipelining doubles the region, so two
    cohorts can be in flight at once and the hidden buffer has the shape of the non-pipelined
    engines': they all share executables."""
    options = dict(VARIANTS[variant])
    if options.get("pipelined"):
        options |= dict(max_cohort_tokens=cohort_cap, max_lone_prompt_tokens=cohort_cap, max_prefill_tokens=cohort_cap)
    return options


def with_linear_cost(llm):
    """Size adaptive groups by linear_predict_s instead of the committed CPU table (whose times
    would make the groups depend on a fit)."""
    llm.engine.predict_s = llm.engine.state.predict_s = linear_predict_s
    return llm


@functools.cache
def served(name, variant):
    cfg, params = model(name)
    prompts, arrivals = workload(cfg.vocab_size)
    llm = with_linear_cost(lp_jax.LLM(cfg, "layered", params=params, **(ENGINE | options_of(variant, CAP // 2))))
    outs = run_with_arrivals(llm, prompts, arrivals, max_tokens=MAX_TOKENS)
    llm.compiles_while_serving = llm.engine.compiles_since_startup()
    return llm, outs


@functools.cache
def expected(name):
    """The reference decoder's tokens for every prompt, drafted by adaptive_pipelined's outputs
    (a draft saves forwards, never changes the result)."""
    cfg, params = model(name)
    prompts, _ = workload(cfg.vocab_size)
    _, drafts = served(name, "adaptive_pipelined")
    return [reference_greedy(cfg, params, p, MAX_TOKENS, CONTEXT, draft=d.token_ids) for p, d in zip(prompts, drafts)]


def passes_of(llm) -> dict[tuple[int, int], np.ndarray]:
    """(request id, position) -> how many times that prompt row ran through each layer."""
    L = llm.model_config.num_layers
    passes: dict[tuple[int, int], np.ndarray] = {}
    for rec in llm.engine.records:
        for (rid, start, end), (lo, hi) in zip(rec.prefill, rec.prefill_ranges):
            for p in range(start, end):
                passes.setdefault((rid, p), np.zeros(L, int))[lo:hi] += 1
    return passes


# Every variant on the MoE model; the combined one also on the sliding-window MoE and the dense model
# (each reference decoding costs seconds on two cores).
GREEDY_CASES = [("tiny-qwen3-moe", v) for v in VARIANTS] + [(m, "adaptive_pipelined") for m in MODELS[1:]]


@pytest.mark.parametrize("name,variant", GREEDY_CASES)
def test_greedy_outputs_equal_reference_decoder(name, variant):
    _, outs = served(name, variant)
    mismatched = [i for i, (o, w) in enumerate(zip(outs, expected(name))) if o.token_ids != w]
    assert not mismatched, f"{variant}: requests {mismatched} differ from the reference decoder"
    assert all(o.status == "finished" for o in outs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_prompt_token_passes_every_layer_once(variant):
    llm, outs = served("tiny-qwen3-moe", variant)
    passes = passes_of(llm)
    for o in outs:
        for p in range(len(o.prompt_token_ids)):
            counts = passes.get((o.request_id, p))
            assert counts is not None and (counts == 1).all(), f"request {o.request_id} token {p}: {counts}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_stall_free_no_leaks_nothing_compiled(variant):
    llm, outs = served("tiny-gpt-oss", variant)
    it = {rec.end_s: rec.iteration for rec in llm.engine.records}
    for o in outs:
        steps = [it[t] for t in o.token_times_s]
        assert steps == list(range(steps[0], steps[0] + len(steps))), f"request {o.request_id} stalled: {steps}"
    assert llm.engine.blocks.all_free()
    assert llm.compiles_while_serving == 0


@pytest.mark.parametrize("variant", ["pipelined", "adaptive_pipelined"])
def test_cohorts_overlap_and_hold_disjoint_rows(variant):
    """Some iteration runs two cohorts in different layer ranges, and no two requests in flight
    at once share a row of the prefill region."""
    llm, _ = served("tiny-qwen3-moe", variant)
    overlapping = [rec for rec in llm.engine.records if len(set(rec.prefill_ranges)) > 1]
    assert overlapping, "no iteration ran two cohorts at once"
    assert any(lo == 0 for rec in overlapping for lo, _ in rec.prefill_ranges)  # a new cohort entered


def test_pipelined_fixed_rule_keeps_groups_and_budget():
    """Each cohort runs its fixed groups (num_groups=3: (0, 1), (1, 2), (2, 4)); beside the oldest
    cohort the prompt-token x layer products stay within pipeline_budget."""
    llm, _ = served("tiny-qwen3-moe", "pipelined")
    budget = EngineConfig(**ENGINE_CONFIG).pipeline_token_layers(llm.model_config.num_layers)
    for rec in llm.engine.records:
        assert set(rec.prefill_ranges) <= {(0, 1), (1, 2), (2, 4)}
        by_range: dict[tuple[int, int], int] = {}
        for (_, start, end), r in zip(rec.prefill, rec.prefill_ranges):
            by_range[r] = by_range.get(r, 0) + end - start
        if len(by_range) > 1:
            assert sum(n * (hi - lo) for (lo, hi), n in by_range.items()) <= budget, rec.iteration


ENGINE_CONFIG = {k: v for k, v in ENGINE.items() if k != "trace"}


@pytest.mark.parametrize("engine,cohort_cap", [(ENGINE_CONFIG, CAP // 2), (API_ENGINE, 64)])
def test_pipelined_options_keep_the_hidden_buffer_of_the_engine_they_extend(engine, cohort_cap):
    """What lets this file's pipelined engines share every executable with the others."""
    pipelined = EngineConfig(**engine | options_of("pipelined", cohort_cap))
    assert pipelined.pipelined and pipelined.max_cohort_tokens == cohort_cap
    assert pipelined.hidden_rows() == EngineConfig(**engine).hidden_rows()


@pytest.mark.parametrize("variant", ["adaptive", "adaptive_pipelined"])
def test_adaptive_iterations_stay_within_target_or_advance_one_layer(variant):
    """Every iteration's predicted time is within the target, unless the oldest cohort had to
    advance alone by its minimum (one layer); and a cohort runs as many layers as fit."""
    llm, _ = served("tiny-qwen3-moe", variant)
    L = llm.model_config.num_layers
    for rec in llm.engine.records:
        if not rec.prefill:
            continue
        ranges = set(rec.prefill_ranges)
        tokens = sum(end - start for _, start, end in rec.prefill)
        layer_tokens = sum((end - start) * (hi - lo) for (_, start, end), (lo, hi) in zip(rec.prefill,
                                                                                         rec.prefill_ranges))
        predicted = 1e-3 + DECODE_S * len(rec.decode_ids) * L + PROMPT_S * layer_tokens
        if predicted > TARGET_S + 1e-12:
            assert len(ranges) == 1 and next(iter(ranges))[1] - next(iter(ranges))[0] == 1, rec.iteration
        elif len(ranges) == 1:
            lo, hi = next(iter(ranges))
            # The most layers that fit: one more would not (or it reached the last layer).
            assert hi == L or predicted + PROMPT_S * tokens > TARGET_S - 1e-12, rec.iteration
    groups = {hi - lo for rec in llm.engine.records for lo, hi in rec.prefill_ranges}
    assert len(groups) > 1, "adaptive chose one group size throughout"


def test_adaptive_needs_a_cost_model():
    cfg, params = tiny()
    from lp_jax.engine.engine import Engine, model_executor

    config = EngineConfig(schedule="layered", group_rule="adaptive", max_model_len=64, max_num_seqs=4,
                          max_prefill_tokens=64, max_cohort_tokens=64, token_budget=32, row_buckets=(16, 72))
    with pytest.raises(ValueError, match="group_rule='adaptive' needs a cost model"):
        Engine(cfg, config, model_executor(params), np.float32)


@pytest.mark.parametrize("options,message", [
    (dict(schedule="chunked", pipelined=True), "pipelined and group_rule='adaptive' are layered's"),
    (dict(group_rule="adaptive", num_groups=2), "num_groups fixes G"),
    (dict(iteration_target_s=0), "iteration_target_s must be a number of seconds > 0"),
    (dict(pipeline_budget=0), "pipeline_budget must be an integer >= 1 or None"),
    (dict(pipelined="yes"), "pipelined must be True or False"),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**options)


@pytest.mark.parametrize("variant", VARIANTS)
def test_abort_mid_flight_spares_the_rest(variant):
    """Abort a request of a cohort past its first layers (fixed-rule pipelined: while a younger
    cohort is in flight too; adaptive pipelined joins only in the oldest's last iteration, so
    not here), and one decoding; the others finish as if alone and every page comes back."""
    cfg, params = tiny()
    prompts = prompts_of([200, 30, 100, 20, 60, 90, 10, 40], seed=1)  # the first is longer than any prefill region (128 rows; 64 pipelined)
    options = options_of(variant, 64)
    if "iteration_target_s" in options:
        # Under the linear cost a cohort of up to 64 (pipelined) or 128 prompt tokens then runs one or
        # two layers an iteration (1 ms + 1 us per token-layer + 8 us per decode row), so it is
        # still in flight when aborted; TARGET_S would pass a 64-token cohort through all four.
        options["iteration_target_s"] = ABORT_TARGET_S
    llm = with_linear_cost(make_llm("layered", **options))
    ids = [llm.add_request(p, max_tokens=8) for p in prompts]
    eng, L = llm.engine, llm.model_config.num_layers
    in_flight = 2 if variant == "pipelined" else 1
    for _ in range(40):
        llm.step()
        cohorts = [c for c in eng.scheduler.cohorts if c.next_layer < L]
        if len(cohorts) >= in_flight and cohorts[0].next_layer > 0:
            break
    else:
        pytest.fail(f"never {in_flight} cohorts in flight")
    mid_prefill = cohorts[0].works[-1].request
    assert llm.abort(mid_prefill.request_id)
    decoding = None
    while decoding is None:
        llm.step()
        decoding = next((r for r in eng.state.running if r.status.value == "decoding"), None)
    assert llm.abort(decoding.request_id)
    aborted = {mid_prefill.request_id, decoding.request_id}
    drain_and_check_aborted(llm, aborted, ids, lambda i: reference_greedy(cfg, params, prompts[i], 8, API_CONTEXT))


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_exhaustion_preempts_and_recomputes_without_changing_outputs(variant):
    prompts = prompts_of([40, 70, 25, 90, 55, 33], seed=2)
    arrivals = [0, 0, 1, 2, 3, 3]
    options = options_of(variant, 64)
    roomy = run_with_arrivals(with_linear_cost(make_llm("layered", **options)), prompts, arrivals, max_tokens=24)
    tight_llm = with_linear_cost(make_llm("layered", num_pages=10, **options))
    tight = run_with_arrivals(tight_llm, prompts, arrivals, max_tokens=24)
    assert [o.token_ids for o in tight] == [o.token_ids for o in roomy]
    assert sum(o.num_preemptions for o in tight) > 0
    assert tight_llm.engine.blocks.all_free()


def test_real_h200_engine_sizes_adaptive_groups_by_the_committed_h200_table(monkeypatch):
    """The path a real engine takes on the lent H200 (LLM -> device_predictor): a device named
    "NVIDIA H200" gets the committed, measured H200 table of qwen3-30b-a3b, without the network."""
    import socket

    from lp_jax.engine.request import Request, SamplingParams, Status
    from lp_jax.engine.scheduler.base import IterationPlan, PrefillWork
    from lp_jax.model.config import get_preset
    from lp_jax.sim import device_predictor
    from lp_jax.sim.cost_model import table_file

    def no_network(*args, **kwargs):
        raise AssertionError("the adaptive schedule's cost model reached for the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    model = get_preset("qwen3-30b-a3b")
    config = EngineConfig(schedule="layered", group_rule="adaptive", iteration_target_s=0.045,
                          routing="qwen3-paper").for_model(model)
    predict_s = device_predictor(model, config, "NVIDIA H200", "gpu")
    table = predict_s.__self__.table
    assert (table.device, table.device_kind, table.provenance) == ("h200", "NVIDIA H200", "measured")
    assert table.to_json() == lp_jax.sim.load_table(table_file("h200", model.name), model.name).to_json()

    def request(i, n, decoding):
        req = Request(i, list(range(n)), SamplingParams(max_tokens=8), 0.0, 0)
        req.num_computed, req.prefill_target = (n, n) if decoding else (0, n)
        req.status = Status.DECODING if decoding else Status.PREFILLING
        return req

    decodes = [request(i, 1000, True) for i in range(32)]
    L = model.num_layers
    decode_only = predict_s(IterationPlan(L, decodes=decodes))
    prompt = request(99, 8192, False)
    one_layer, three_layers = (predict_s(IterationPlan(L, decodes=decodes, prefills=[PrefillWork(prompt, 0, 8192)],
                                                       prefill_layers=(0, hi))) for hi in (1, 3))
    # The measured anchor's decode gaps are 23-26 ms at the median: a decode-only iteration of 32.
    assert 0.005 < decode_only < 0.05
    assert decode_only < one_layer < three_layers
