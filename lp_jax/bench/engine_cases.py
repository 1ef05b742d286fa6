"""The engine benchmark's cases: decode, prefill, layered and chunked mixed iterations built from
requests placed straight into the engine, and a serving run through `LLM.generate`.

Decode requests start in the decode state with their pages allocated (the pool holds whatever it
holds: attention's cost does not depend on the values), so no prefill runs before them."""

from __future__ import annotations

import time

from lp_jax.bench.engine_report import log
from lp_jax.bench.plan_timing import summarise, time_plan, timed
from lp_jax.engine import compile_counter
from lp_jax.engine.request import SamplingParams, Status
from lp_jax.engine.scheduler import IterationPlan, PrefillWork
from lp_jax.model.config import ModelConfig, even_split


def placed(engine, prompt: list[int], computed: int, status: Status, max_tokens: int):
    """A request admitted as if `computed` of its tokens had been prefilled (pages allocated for
    them; their contents are whatever the pool holds)."""
    rid = engine.add_request(prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    req = engine.requests[rid]
    engine.state.admit(req)
    engine.blocks.allocate(rid, computed + 1)
    req.status, req.num_computed = status, computed
    return req


def random_prompt(rng, cfg: ModelConfig, n: int) -> list[int]:
    return rng.integers(0, cfg.vocab_size, n).tolist()


def decode_case(llm, B: int, context: int, reps: int, item: int, ceil: dict, rng) -> dict:
    engine, cfg = llm.engine, llm.model_config
    reqs = [placed(engine, random_prompt(rng, cfg, context), context - 1, Status.DECODING, 2 * reps + 8)
            for _ in range(B)]
    plan = IterationPlan(cfg.num_layers, decodes=reqs)
    timing = time_plan(engine.executor, plan, reps)
    # The engine itself: steady-state steps (each dispatches one iteration and reads the last back).
    for _ in range(2):
        engine.step()
    spent, steps = engine.total_expert_bytes, []

    def step():  # counted: `timed` runs a second loop when CUPTI is there
        steps.append(engine.step())

    timing["engine_ms"], timing["engine_busy_ms"] = timed(step, reps)
    engine_experts = (engine.total_expert_bytes - spent) / len(steps)
    drain(llm)
    return summarise(f"decode B={B}", cfg, plan, timing, item, ceil, "engine_ms", batch=B, context=context,
                     engine_expert_GB=engine_experts / 1e9)


def prefill_case(llm, tokens: int, reps: int, item: int, ceil: dict, rng) -> dict:
    engine, cfg = llm.engine, llm.model_config
    req = placed(engine, random_prompt(rng, cfg, tokens), 0, Status.PREFILLING, 1)
    engine.blocks.allocate(req.request_id, tokens)
    plan = IterationPlan(cfg.num_layers, prefills=[PrefillWork(req, 0, tokens, 0)], prefill_layers=(0, cfg.num_layers))
    timing = time_plan(engine.executor, plan, reps)
    drain(llm)
    row = summarise(f"prefill {tokens}", cfg, plan, timing, item, ceil, "pipelined_ms", tokens=tokens)
    row["floor_rate_pct"] = 100 * row["floor_ms"] / row["pipelined_ms"]
    return row


def mixed_case(llm, schedule: str, decodes: int, context: int, prefill_tokens: int, prompt_len: int, chunk: int,
               reps: int, item: int, ceil: dict, rng) -> dict:
    """decodes at `context` tokens, with (layered) a cohort of `prefill_tokens` in prompts of
    about `prompt_len` tokens, or (chunked) one chunk of a `prompt_len`-token prompt."""
    engine, cfg = llm.engine, llm.model_config
    L = cfg.num_layers
    decoding = [placed(engine, random_prompt(rng, cfg, context), context - 1, Status.DECODING, 2 * reps + 8)
                for _ in range(decodes)]
    if schedule == "layered":
        n = max(1, prefill_tokens // prompt_len)
        works, offset = [], 0
        for size in [prefill_tokens // n] * (n - 1) + [prefill_tokens - (n - 1) * (prefill_tokens // n)]:
            req = placed(engine, random_prompt(rng, cfg, size), 0, Status.PREFILLING, 1)
            engine.blocks.allocate(req.request_id, size)
            works.append(PrefillWork(req, 0, size, offset))
            offset += size
        groups = even_split(L, engine.config.num_groups_for(prefill_tokens, L))
        layers = groups[len(groups) // 2]
        extra = dict(cohort_prompts=n, groups=len(groups), group_layers=list(layers))
    else:
        start = max(0, min(prompt_len // 2, prompt_len - chunk))
        req = placed(engine, random_prompt(rng, cfg, prompt_len), start, Status.PREFILLING, 1)
        engine.blocks.allocate(req.request_id, start + chunk)
        works, layers = [PrefillWork(req, start, start + chunk, 0)], (0, L)
        extra = dict(chunk=[start, start + chunk])
    plan = IterationPlan(L, decodes=decoding, prefills=works, prefill_layers=layers)
    timing = time_plan(engine.executor, plan, reps)
    drain(llm)
    return summarise(f"{schedule} mixed", cfg, plan, timing, item, ceil, "pipelined_ms", decodes=decodes,
                     context=context, prefill_tokens=plan.prefill_tokens, **extra)


def drain(llm) -> None:
    """Abort every request and read back what is in flight: the pool is empty again."""
    for rid in list(llm.engine.requests):
        llm.abort(rid)
    while llm.has_unfinished():
        llm.step()
    assert llm.engine.blocks.all_free()


def serving_run(llm, n: int, context: int, rng) -> dict:
    cfg = llm.model_config
    prompts = [random_prompt(rng, cfg, int(k)) for k in rng.integers(min(64, context), context + 1, n)]
    out_tokens = rng.integers(8, 65, n)
    before = compile_counter.count()
    t = time.perf_counter()
    ids = [llm.add_request(p, max_tokens=int(m), ignore_eos=True) for p, m in zip(prompts, out_tokens)]
    done = 0
    while llm.has_unfinished():
        done += len(llm.step())
    wall = time.perf_counter() - t
    row = dict(case=f"{n}-request run (layered)", requests=n, finished=done, wall_s=wall,
               compiles=compile_counter.count() - before, prompt_tokens=sum(map(len, prompts)),
               output_tokens=int(out_tokens.sum()))
    assert done == len(ids)
    log(f"  {row['case']}: {wall:.1f} s wall, {row['compiles']} compilations, {row['prompt_tokens']} prompt + "
        f"{row['output_tokens']} output tokens")
    return row
