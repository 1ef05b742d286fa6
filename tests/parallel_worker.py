"""Run in a fresh process by tests/test_parallel_engine.py: greedy outputs of the tiny models on
one device and under tp x ep splits of this process's devices (XLA_FLAGS forces the CPU device
count before JAX starts; the test sets it), or one process of a multi-process run.

    python -m tests.parallel_worker CASES_JSON
        CASES_JSON: [[model, schedule, tp, ep], ...]; prints one JSON line
        {"devices": n, "process": i, "agreed_elapsed": s, "all_reduce": fitted cost, "outputs": {"model/schedule/tp/ep": [[token, ...] per prompt]},
         "shards": {"model/schedule/tp/ep": {array: one device's shard shape}}}, with the
        single-device outputs of every (model, schedule) under tp = ep = 1 too.
    python -m tests.parallel_worker CASES_JSON COORDINATOR NUM_PROCESSES PROCESS_ID
        the same after joining the other processes (jax.distributed); the single-device
        outputs are left to the caller (a one-device engine cannot run inside the group).
"""

from __future__ import annotations

import json
import sys

import numpy as np

# Small and few shapes: one row bucket, one sampled-row bucket, so each layout compiles a handful
# of executables that all three schedules share (their hidden buffers are the same size).
ENGINE = dict(max_model_len=64, max_num_seqs=8, max_prefill_tokens=40, max_cohort_tokens=40, token_budget=24,
              num_pages=40, row_buckets=(48,))
PROMPT_LENGTHS = (1, 17, 40, 9)  # one token, several pages, the whole cohort cap
MAX_TOKENS = 5


def prompts(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(11)
    return [[int(t) for t in rng.integers(0, vocab, n)] for n in PROMPT_LENGTHS]


def outputs(model: str, schedule: str, tp: int, ep: int) -> tuple[list[list[int]], dict]:
    """(greedy tokens per prompt, one device's shard shapes)."""
    import lp_jax
    from lp_jax.model.config import get_preset

    llm = lp_jax.LLM(model, schedule, tp=tp, ep=ep, num_groups=3 if schedule == "layered" else None, seed=5,
                     **ENGINE)
    # Arrivals over several iterations: decodes run beside later prefills (mixed batches).
    ps, out, ids = prompts(get_preset(model).vocab_size), {}, []
    for p in ps:
        ids.append(llm.add_request(p, max_tokens=MAX_TOKENS))
        for o in llm.step():
            out[o.request_id] = o.token_ids
    while llm.has_unfinished():
        for o in llm.step():
            out[o.request_id] = o.token_ids
    return [out[i] for i in ids], local_shapes(llm)


def local_shapes(llm) -> dict[str, list[int]]:
    """One device's shard of a few arrays: proof that they are split, not replicated."""
    ex = llm.engine.executor
    arrays = {"k_pool": ex.k_pool, "wq": ex.stacked["wq"], "w_gate": ex.stacked["w_gate"],
              "embed": ex.head["embed"]}
    return {name: list(a.addressable_shards[0].data.shape) for name, a in arrays.items()}


def main(argv: list[str]) -> None:
    cases = [tuple(c) for c in json.loads(argv[0])]
    if len(argv) > 1:
        from lp_jax.parallel import start_distributed
        start_distributed(argv[1], int(argv[2]), int(argv[3]), timeout_s=60)
    else:
        cases = sorted({(m, s, 1, 1) for m, s, _, _ in cases} | set(cases))
    import jax

    from lp_jax.parallel.multihost import agreed_elapsed

    result = {f"{m}/{s}/{tp}/{ep}": outputs(m, s, tp, ep) for m, s, tp, ep in cases}
    cost = None
    if len(argv) == 1 and jax.device_count() > 1:  # the simulator's collective term, measured here
        from lp_jax.parallel.collectives import time_all_reduce
        cost = time_all_reduce(sizes=(1 << 12, 1 << 20, 1 << 22), reps=5).to_json()
    print(json.dumps({"devices": jax.device_count(), "process": jax.process_index(),
                      "agreed_elapsed": agreed_elapsed(0.25 + jax.process_index()),  # process 0's: 0.25
                      "all_reduce": cost,
                      "outputs": {k: v[0] for k, v in result.items()},
                      "shards": {k: v[1] for k, v in result.items()}}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
