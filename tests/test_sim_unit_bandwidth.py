"""The attention kernel's longest-unit bound (DeviceParams.unit_bw, LayerWork.attn_longest_bytes):
the key splits follow the kernel's rule, the bound lengthens only calls whose longest decode row
outlasts the rest of the layer's attention, and fit_unit_bw recovers the unit_bw a synthetic trace
was made with."""

import dataclasses

import numpy as np
import pytest

import lp_jax
from lp_jax.bench import iteration_replay
from lp_jax.bench.unit_bandwidth_fit import fit_unit_bw
from lp_jax.sim.work import key_splits

TRUE_BW = 5e10  # bytes/s per CTA the synthetic trace is made with


def test_key_splits_follow_the_kernel():
    # 132 CTAs, 4 KV heads: 8 rows x 4 heads = 32 units -> 4 splits, 16 rows 2, 32 rows and more 1.
    assert [key_splits(r, 4) for r in (1, 8, 16, 32, 512)] == [16, 4, 2, 1, 1]


@pytest.fixture(scope="module")
def executor():
    llm = lp_jax.LLM("qwen3-30b-a3b", "chunked", executor="sim:h200", token_budget=512, routing="qwen3-paper")
    return llm.engine.executor


def with_bw(executor, bw):
    executor.table = executor.table.with_params(
        device_params=dataclasses.replace(executor.table.device_params, unit_bw=bw))


def synthetic_trace(executor, n: int, seed: int = 0) -> list[dict]:
    """n mixed iterations (4-16 decodes at 2K-40K keys + a 508-token chunk), timed back to back
    with the plan-by-plan replay's own periods at unit_bw = TRUE_BW."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        contexts = [int(c) for c in rng.integers(2_000, 40_000, rng.integers(4, 17))]
        rows.append(dict(iteration=i, start_s=0.0, end_s=0.0, decode_contexts=contexts,
                         prefill=[[1000 + i, 0, 512 - len(contexts), False, [0, 48]]], prefill_layers=[0, 48]))
    base = executor.table
    with_bw(executor, TRUE_BW)
    L = executor.model.num_layers
    periods = [executor.predict_s(iteration_replay.plan_of(r, L)) + 0.0 for r in rows]
    executor.table = base
    end = 0.0
    for r, p in zip(rows, periods):
        r["start_s"], end = end - 1e-4, end + p  # dispatched before the last one was read back: busy
        r["end_s"] = end
    return rows


def test_the_bound_charges_only_long_decodes(executor):
    L = executor.model.num_layers
    short = iteration_replay.plan_of(dict(decode_contexts=[100] * 8, prefill=[[1, 0, 504, False, [0, 48]]],
                                          prefill_layers=[0, 48]), L)
    long = iteration_replay.plan_of(dict(decode_contexts=[100] * 7 + [40_000], prefill=[[1, 0, 504, False, [0, 48]]],
                                         prefill_layers=[0, 48]), L)
    base = executor.table
    try:
        with_bw(executor, 0.0)  # the bound off (the committed H200 table has it on)
        off = [executor.predict_s(p) for p in (short, long)]
        with_bw(executor, TRUE_BW)
        on = [executor.predict_s(p) for p in (short, long)]
    finally:
        executor.table = base
    assert on[0] == pytest.approx(off[0], rel=1e-9)
    # 40K keys x 128 x 2 x 2 bytes per KV head, one split, 48 layers at TRUE_BW: at least that long.
    assert on[1] > off[1] and on[1] >= 48 * 40_000 * 512 / TRUE_BW


def test_fit_recovers_the_unit_bandwidth(executor):
    rows = synthetic_trace(executor, 60)
    bw, err = fit_unit_bw(rows, executor, steps=20)
    assert err < 0.01 and bw == pytest.approx(TRUE_BW, rel=0.05)
