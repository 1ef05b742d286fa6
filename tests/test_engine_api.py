"""The public API: bad input is refused before it reaches the engine, aborts, preemption when KV
pages run out, sampling, and a 200-request run that compiles nothing after start-up."""

from __future__ import annotations


import numpy as np
import pytest

import lp_jax
from lp_jax.model.config import get_preset
from tests.engine_helpers import drain_and_check_aborted, preset_model, reference_greedy, run_with_arrivals

CONTEXT = 256
ENGINE = dict(max_model_len=CONTEXT, max_num_seqs=8, max_prefill_tokens=128, max_cohort_tokens=128, token_budget=64,
              row_buckets=(64, 136))


def tiny():
    return preset_model("tiny-qwen3-moe", seed=5)


def make_llm(schedule="layered", **options):
    cfg, params = tiny()
    return lp_jax.LLM(cfg, schedule, params=params, **(ENGINE | options))


def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, 512, n)] for n in lengths]


BAD_REQUESTS = [
    (dict(prompt=[]), "empty prompt"),
    (dict(prompt=[1, 512]), "token 1 is 512, outside the vocabulary"),
    (dict(prompt=[-1]), "token 0 is -1, outside the vocabulary"),
    (dict(prompt="hello"), "list of token ids"),
    (dict(prompt=[1.5]), "outside the vocabulary"),
    (dict(prompt=[1] * 250, max_tokens=10), "exceeds the context limit of 256"),
    (dict(prompt=[1], max_tokens=0), "max_tokens must be a positive integer"),
    (dict(prompt=[1], temperature=-1.0), "temperature must be a finite number"),
    (dict(prompt=[1], temperature=float("nan")), "temperature must be a finite number"),
    (dict(prompt=[1], top_p=0.0), "top_p must be in"),
    (dict(prompt=[1], top_p=1.5), "top_p must be in"),
    (dict(prompt=[1], top_k=-2), "top_k must be an integer"),
    (dict(prompt=[1], seed=-3), "seed must be a non-negative integer"),
    (dict(prompt=[1], stop_token_ids=[9999]), "stop token id 9999"),
]


@pytest.mark.parametrize("kwargs,message", BAD_REQUESTS)
def test_bad_request_rejected_with_named_problem(kwargs, message):
    llm = make_llm()
    with pytest.raises(ValueError, match=message):
        llm.add_request(**kwargs)
    assert not llm.has_unfinished()


def test_request_that_can_never_fit_the_kv_pool():
    # The tight engine of test_kv_exhaustion_preempts_and_recomputes_without_changing_outputs[layered]
    # (9 usable pages of 16 tokens), so that no pool size is compiled for this test alone.
    llm = make_llm(num_groups=2, num_pages=10)
    with pytest.raises(ValueError, match="can never fit the KV pool: 150 tokens need 10 pages of 16, the pool has 9"):
        llm.add_request([1] * 140, max_tokens=10)


def test_generate_checks_every_prompt_before_queueing_any():
    llm = make_llm()
    with pytest.raises(ValueError, match="prompt 2: empty prompt"):
        llm.generate([[1, 2], [3], []])
    assert not llm.has_unfinished()


def test_unknown_engine_option_and_schedule():
    with pytest.raises(ValueError, match="unknown engine options: page_sise"):
        make_llm(page_sise=8)
    with pytest.raises(ValueError, match="unknown schedule 'fifo'"):
        make_llm(schedule="fifo")


def test_bad_input_never_disturbs_running_requests():
    cfg, params = tiny()
    prompts = prompts_of([5, 40, 90, 130])
    want = [reference_greedy(cfg, params, p, 6, CONTEXT) for p in prompts]
    llm = make_llm()
    ids = [llm.add_request(p, max_tokens=6) for p in prompts]
    done = {}
    for step in range(200):
        if step in (1, 3, 5):
            for kwargs, _ in BAD_REQUESTS:
                with pytest.raises(ValueError):
                    llm.add_request(**kwargs)
            with pytest.raises(ValueError, match="unknown request id 12345"):
                llm.abort(12345)
            with pytest.raises(ValueError, match="unknown request id 'x'"):
                llm.abort("x")
        for out in llm.step():
            done[out.request_id] = out.token_ids
        if not llm.has_unfinished():
            break
    assert [done[i] for i in ids] == want


@pytest.mark.parametrize("schedule", ["prefill_first", "chunked", "layered"])
def test_abort_in_every_state_frees_pages_and_spares_the_rest(schedule):
    """Abort one request while waiting, one mid-prefill (a layered cohort at group 1, a chunked
    prompt after its first chunk) and one while decoding; the others finish as if alone."""
    cfg, params = tiny()
    prompts = prompts_of([200, 30, 100, 20, 60], seed=1)  # the first is longer than the cap (128)
    llm = make_llm(schedule, num_groups=2)
    ids = [llm.add_request(p, max_tokens=8) for p in prompts]
    llm.step()
    eng = llm.engine
    mid_prefill = next(r for r in eng.state.running if r.status.value == "prefilling")
    waiting = eng.state.waiting[-1]
    assert llm.abort(waiting.request_id) and llm.abort(mid_prefill.request_id)
    decoding = None
    while decoding is None:
        llm.step()
        decoding = next((r for r in eng.state.running if r.status.value == "decoding"), None)
    assert llm.abort(decoding.request_id)
    assert not llm.abort(decoding.request_id)  # already ended: nothing to do
    aborted = {waiting.request_id, mid_prefill.request_id, decoding.request_id}
    drain_and_check_aborted(llm, aborted, ids, lambda i: reference_greedy(cfg, params, prompts[i], 8, CONTEXT))


@pytest.mark.parametrize("schedule", ["prefill_first", "chunked", "layered"])
def test_kv_exhaustion_preempts_and_recomputes_without_changing_outputs(schedule):
    prompts = prompts_of([40, 70, 25, 90, 55, 33], seed=2)
    arrivals = [0, 0, 1, 2, 3, 3]
    roomy = run_with_arrivals(make_llm(schedule, num_groups=2), prompts, arrivals, max_tokens=24)
    # 9 usable pages: far too few for all six (prefill_first's watermark avoids preempting at 13).
    tight_llm = make_llm(schedule, num_groups=2, num_pages=10)
    tight = run_with_arrivals(tight_llm, prompts, arrivals, max_tokens=24)
    assert [o.token_ids for o in tight] == [o.token_ids for o in roomy]
    assert sum(o.num_preemptions for o in tight) > 0
    assert tight_llm.engine.blocks.all_free()


def test_sampling_is_seeded_per_request_and_schedule_independent():
    prompts = prompts_of([10, 50, 100], seed=3)
    kw = dict(max_tokens=12, temperature=0.8, top_p=0.9, top_k=50, seed=1234)
    runs = [[o.token_ids for o in make_llm(s, num_groups=2).generate(prompts, **kw)]
            for s in ("chunked", "layered")]
    assert runs[0] == runs[1]
    other_seed = [o.token_ids for o in make_llm("layered").generate(prompts, **(kw | dict(seed=99)))]
    assert other_seed != runs[0]
    greedy = [o.token_ids for o in make_llm("layered").generate(prompts, max_tokens=12)]
    top1 = [o.token_ids for o in make_llm("layered").generate(prompts, max_tokens=12, temperature=1.0, top_k=1)]
    assert top1 == greedy


def test_stop_token_ends_request_early():
    llm = make_llm()
    [free_run] = llm.generate(prompts_of([20]), max_tokens=10)
    stop = free_run.token_ids[3]
    [stopped] = make_llm().generate(prompts_of([20]), max_tokens=10, stop_token_ids=[stop])
    assert stopped.token_ids == free_run.token_ids[:free_run.token_ids.index(stop) + 1]
    assert stopped.finish_reason == "stop"


@pytest.mark.parametrize("schedule", ["chunked", "layered"])
def test_200_requests_compile_nothing_after_startup(schedule):
    rng = np.random.default_rng(4)
    llm = make_llm(schedule)
    prompts = [[int(t) for t in rng.integers(0, 512, n)] for n in rng.integers(1, 120, 200)]
    arrivals = sorted(rng.integers(0, 150, 200).tolist())
    lengths = rng.integers(1, 6, 200)
    order = sorted(range(200), key=lambda i: arrivals[i])
    step = k = finished = 0
    while k < 200 or llm.has_unfinished():
        while k < 200 and arrivals[order[k]] <= step:
            llm.add_request(prompts[order[k]], max_tokens=int(lengths[order[k]]))
            k += 1
        finished += len(llm.step())
        step += 1
    assert finished == 200
    assert llm.engine.compiles_since_startup() == 0
    assert llm.engine.blocks.all_free()


def test_model_that_does_not_fit_fails_before_allocating():
    from lp_jax.engine.config import EngineConfig
    from lp_jax.engine.memory import plan_num_pages

    cfg = get_preset("qwen3-30b-a3b")
    with pytest.raises(ValueError, match=r"qwen3-30b-a3b does not fit: weights 56\.9 GiB"):
        plan_num_pages(cfg, EngineConfig(max_model_len=4096), "bfloat16", available=58 * 2**30)
    with pytest.raises(ValueError, match="num_pages=100000 needs"):
        plan_num_pages(cfg, EngineConfig(max_model_len=4096, num_pages=100000), "bfloat16", available=80 * 2**30)
    pages = plan_num_pages(cfg, EngineConfig(max_model_len=4096), "bfloat16", available=80 * 2**30)
    assert 4096 // 16 < pages <= 64 * 256 + 1


def test_memory_plan_counts_the_load_peak():
    """A model whose weights, workspace and one sequence of KV fit, but not the weights plus the
    layer weight in transit while they load, is refused before anything is made."""
    from lp_jax.engine.config import EngineConfig
    from lp_jax.engine.memory import load_peak_bytes, plan_num_pages, weight_bytes, workspace_bytes

    cfg = get_preset("qwen3-30b-a3b")
    options = EngineConfig(max_num_seqs=1, max_prefill_tokens=16, max_cohort_tokens=16, max_model_len=64)
    steady = weight_bytes(cfg, "bfloat16") + workspace_bytes(cfg, options, "bfloat16") + 8 * 2**20
    assert load_peak_bytes(cfg, "bfloat16") > steady  # the 1.5 GiB expert stack in transit exceeds the workspace
    with pytest.raises(ValueError, match=r"does not fit while its weights are made or loaded: 58\.4 GiB"):
        plan_num_pages(cfg, options, "bfloat16", available=steady)
    assert plan_num_pages(cfg, options, "bfloat16", available=load_peak_bytes(cfg, "bfloat16")) >= 5


def test_llm_from_a_checkpoint_directory():
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "tiny-qwen3"
    llm = lp_jax.LLM(str(path), "chunked", **ENGINE)
    [out] = llm.generate([[1, 2, 3, 4]], max_tokens=4)
    assert len(out.token_ids) == 4 and llm.model_config.tie_word_embeddings


def test_next_iteration_is_dispatched_before_tokens_are_read_back():
    """Pipelining: iteration i+1 goes to the device before iteration i's tokens come back, and
    a token's time is when the host read it (after the next iteration's dispatch)."""
    llm = make_llm("chunked", trace=True)
    ex, log = llm.engine.executor, []
    dispatch, fetch = ex.dispatch, ex.fetch
    ex.dispatch = lambda plan: log.append("dispatch") or dispatch(plan)
    ex.fetch = lambda flight: log.append("fetch") or fetch(flight)
    prompts = prompts_of([30, 12], seed=6)
    outs = llm.generate(prompts, max_tokens=6)
    cfg, params = tiny()
    assert [o.token_ids for o in outs] == [reference_greedy(cfg, params, p, 6, CONTEXT) for p in prompts]
    n = log.count("dispatch")
    assert n == 6 and log == ["dispatch"] + ["dispatch", "fetch"] * (n - 1) + ["fetch"]
    recs = llm.engine.records
    assert all(a.end_s > b.start_s for a, b in zip(recs, recs[1:]))
    assert {t for o in outs for t in o.token_times_s} <= {r.end_s for r in recs}


def test_generate_keeps_requests_queued_earlier_and_step_returns_them():
    """Requests added with add_request before generate() run alongside it; those that finish
    inside the call come back from the next step(), with their outputs intact."""
    cfg, params = tiny()
    early_prompts, late_prompts = prompts_of([12, 70], seed=7), prompts_of([30, 5], seed=8)
    llm = make_llm("chunked")
    early = [llm.add_request(p, max_tokens=4) for p in early_prompts]
    outs = llm.generate(late_prompts, max_tokens=10)  # longer: the early ones finish inside the call
    assert [o.token_ids for o in outs] == [reference_greedy(cfg, params, p, 10, CONTEXT) for p in late_prompts]
    assert llm.has_unfinished()  # the held outputs are still to be returned
    held = {o.request_id: o for o in llm.step()}
    assert set(held) == set(early) and not llm.has_unfinished()
    for rid, p in zip(early, early_prompts):
        assert held[rid].token_ids == reference_greedy(cfg, params, p, 4, CONTEXT)
        assert held[rid].status == "finished"
    assert llm.step() == []


def test_sampling_parameters_take_any_integral_type_and_refuse_bools_and_floats():
    llm = make_llm()
    rid = llm.add_request(np.array([3, 4, 5]), max_tokens=np.int64(3), top_k=np.int32(5), seed=np.uint16(7),
                          temperature=np.float32(0.5), stop_token_ids=[np.int64(9)])
    params = llm.engine.requests[rid].params
    assert (params.max_tokens, params.top_k, params.seed, params.stop_token_ids) == (3, 5, 7, (9,))
    assert all(type(v) is int for v in (params.max_tokens, params.top_k, params.seed, *params.stop_token_ids))
    for kwargs, message in [(dict(max_tokens=True), "max_tokens must be a positive integer, got True"),
                            (dict(max_tokens=3.0), "max_tokens must be a positive integer, got 3.0"),
                            (dict(top_k=np.float64(2)), "top_k must be an integer"),
                            (dict(seed=False), "seed must be a non-negative integer, got False"),
                            (dict(temperature=True), "temperature must be a finite number"),
                            (dict(stop_token_ids=[1.0]), "stop token id 1.0")]:
        with pytest.raises(ValueError, match=message):
            llm.add_request([1, 2], **kwargs)
    while llm.has_unfinished():
        llm.step()
