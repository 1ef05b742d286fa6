"""Pipeline parallelism in the simulator (lp_jax/sim/pipeline.py): a 2-stage timeline computed by
hand, with and without decode micro-batches; one stage is the single-device simulator exactly;
groups cut at stage bounds; bad options refused by name."""

from __future__ import annotations

import numpy as np
import pytest

import lp_jax
from lp_jax.engine.config import EngineConfig
from lp_jax.engine.request import Request, SamplingParams, Status
from lp_jax.engine.scheduler.base import IterationPlan
from lp_jax.engine.scheduler.layered import fixed_groups
from lp_jax.model.config import get_preset
from lp_jax.sim import VirtualClock, parse_executor, pipeline_of
from lp_jax.sim.cost_model import CostTable, DeviceParams, HostParams, Peaks
from lp_jax.sim.pipeline import PipelineExecutor, PipelineSpec
from tests.engine_helpers import run_with_arrivals
from tests.test_engine_schedules import ENGINE, MAX_TOKENS
from tests.test_sim_engine import workload

# A device whose calls cost only fixed times (peaks so high that bytes and FLOPs cost ~1e-26 s):
# a call 2 ms + 1 ms a layer, the sampling head 0.5 ms; the host 0.1 ms an iteration, 10 us a launch.
CALL, LAYER, HEAD, STEP, LAUNCH = 2e-3, 1e-3, 5e-4, 1e-4, 1e-5
LATENCY, ROW_S = 2e-4, 1e-3  # the link: 0.2 ms a transfer + 1 ms a row


def fixed_table(model: str) -> CostTable:
    return CostTable(model=model, device="test", device_kind="test device", provenance="datasheet",
                     backend="reference", dtype="float32", memory_bytes=1 << 34, peaks=Peaks(1e30, 1e30),
                     device_params=DeviceParams(call_s=CALL, layer_s=LAYER, head_s=HEAD),
                     host=HostParams(step_s=STEP, decode_s=0.0, prefill_s=0.0, launch_s=LAUNCH, readback_s=5e-5),
                     source="tests", date="-", commit="-")


def executor(micro_batches: bool) -> PipelineExecutor:
    model = get_preset("tiny-qwen3")  # 4 dense layers: stage 0 holds layers 0-1, stage 1 layers 2-3
    row_bytes = model.hidden_size * 4
    spec = PipelineSpec(stages=2, link_Bps=row_bytes / ROW_S, link_latency_s=LATENCY, micro_batches=micro_batches)
    config = EngineConfig(schedule="chunked", max_model_len=64, max_num_seqs=4, token_budget=32, row_buckets=(8, 40))
    return PipelineExecutor(model, config, None, fixed_table(model.name), VirtualClock(), pipeline=spec)


def decoding(i: int) -> Request:
    req = Request(i, [1, 2, 3], SamplingParams(max_tokens=8), 0.0, 0)
    req.num_computed = req.prefill_target = 3
    req.status = Status.DECODING
    return req


def test_two_stages_by_hand_without_micro_batches():
    """Decode-only iterations of one request: each waits for the last one's token (the bubble)."""
    ex, a = executor(False), decoding(0)
    first = ex.dispatch(IterationPlan(4, decodes=[a]))
    second = ex.dispatch(IterationPlan(4, decodes=[a]))  # the engine dispatches i + 1 before reading i
    stage = CALL + 2 * LAYER  # one call of the stage's two layers
    hop = LATENCY + ROW_S  # one decode row to the next stage
    # Iteration 1: host step, launch; stage 0; hop; stage 1 (launched by its worker long before); head; latency back.
    t0 = STEP + LAUNCH
    ready1 = t0 + stage + hop + stage + HEAD + LATENCY
    assert first.ready_s == pytest.approx(ready1, rel=1e-12, abs=1e-15)
    # Iteration 2: stage 0 idles until the token of iteration 1 is back.
    ready2 = ready1 + stage + hop + stage + HEAD + LATENCY
    assert second.ready_s == pytest.approx(ready2, rel=1e-12, abs=1e-15)
    assert ex.stage_busy_s == pytest.approx([2 * stage, 2 * (stage + HEAD)])
    span = ready2 - t0
    assert ex.idle_fractions() == pytest.approx([1 - 2 * stage / span, 1 - 2 * (stage + HEAD) / span])
    assert ex.fetch(first).decode_tokens == [ex.token]


def test_two_stages_by_hand_with_micro_batches():
    """Two decodes in two slices: slice B runs on stage 0 while slice A is on stage 1."""
    ex, a, b = executor(True), decoding(0), decoding(1)
    first = ex.dispatch(IterationPlan(4, decodes=[a, b]))
    second = ex.dispatch(IterationPlan(4, decodes=[a, b]))
    stage, hop = CALL + 2 * LAYER, LATENCY + ROW_S
    a0 = STEP + LAUNCH  # iteration 1, slice A on stage 0
    a1 = a0 + stage + hop  # ... on stage 1
    a_back = a1 + stage + HEAD + LATENCY
    b0 = a0 + stage  # slice B on stage 0 right after A
    b1 = max(a1 + stage + HEAD, b0 + stage + hop)  # on stage 1 after A's head
    b_back = b1 + stage + HEAD + LATENCY
    assert first.ready_s == pytest.approx(b_back, rel=1e-12)
    # Iteration 2: A waits for its own token only (not for B's).
    a0 = max(b0 + stage, a_back)
    a1 = max(b1 + stage + HEAD, a0 + stage + hop)
    b0 = max(a0 + stage, b_back)
    b1 = max(a1 + stage + HEAD, b0 + stage + hop)
    assert second.ready_s == pytest.approx(b1 + stage + HEAD + LATENCY, rel=1e-12)
    assert ex.stage_busy_s == pytest.approx([4 * stage, 4 * (stage + HEAD)])
    # Each slice is its own call and its own segment (what expert accounting reads).
    records = ex.fetch(first).segments
    assert [r.rows_per_request for r in records] == [{0: 1}, {1: 1}]


def test_a_prefill_range_across_the_stage_bound_hands_its_rows_over():
    """A 16-token prompt through layers [1, 3) (stages 0 and 1), no decodes: stage 1 starts after
    stage 0's call plus the transfer of its 16 rows; two range calls (1-layer pieces)."""
    from lp_jax.engine.scheduler.base import PrefillWork

    ex = executor(False)
    req = Request(5, list(range(16)), SamplingParams(max_tokens=4), 0.0, 0)
    req.status, req.prefill_target = Status.PREFILLING, 16
    flight = ex.dispatch(IterationPlan(4, prefills=[PrefillWork(req, 0, 16)], prefill_layers=(1, 3)))
    one_layer_call = CALL + LAYER
    expected = STEP + LAUNCH + one_layer_call + LATENCY + 16 * ROW_S + one_layer_call
    assert flight.ready_s == pytest.approx(expected, rel=1e-12)
    assert ex.hidden_ready[5] == (pytest.approx(expected), 1)


@pytest.mark.parametrize("schedule,table", [("chunked", "cpu"), ("layered", "cpu"), ("layered", "h200")])
def test_one_stage_is_the_single_device_simulator_exactly(schedule, table):
    name = "tiny-qwen3-moe" if table == "cpu" else "qwen3-30b-a3b"
    cfg = get_preset(name)
    prompts, arrivals = workload(cfg.vocab_size)
    options = dict(ENGINE, num_groups=3) if schedule == "layered" else dict(ENGINE)
    runs = []
    for executor_spec in (f"sim:{table}", f"sim:{table}:pp=1"):
        llm = lp_jax.LLM(name, schedule, executor=executor_spec, **options)
        outs = run_with_arrivals(llm, prompts[:12], arrivals[:12], max_tokens=MAX_TOKENS)
        runs.append(([o.token_times_s for o in outs], [o.expert_bytes for o in outs], llm.engine.executor.device_busy_s))
    assert type(llm.engine.executor) is PipelineExecutor
    assert runs[0] == runs[1]


def test_groups_inside_stages():
    assert fixed_groups(48, 16, 1) == [(3 * i, 3 * i + 3) for i in range(16)]
    # 4 stages of 12 layers, ceil(6 / 4) = 2 groups each: no group spans a bound.
    assert fixed_groups(48, 6, 4) == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 30), (30, 36), (36, 42), (42, 48)]
    assert fixed_groups(4, 8, 2) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_executor_options_are_parsed_and_refused_by_name():
    assert parse_executor("sim:h200:pp=4:link=pcie:mb=true") == "h200"
    assert pipeline_of("sim:h200:pp=4:link=pcie:mb=true") == PipelineSpec(4, 64e9, micro_batches=True)
    assert pipeline_of("sim:h200:pp=2:link=100") == PipelineSpec(2, 100e9)
    assert pipeline_of("sim:h200") is None
    for spec, message in [("sim:h200:pp=0", "pp .pipeline stages. must be an integer >= 1"),
                          ("sim:h200:link=fast", "link must be one of nvlink, pcie"),
                          ("sim:h200:mb=yes", "mb must be true or false"),
                          ("sim:h200:tp=2", "unknown executor option 'tp=2'")]:
        with pytest.raises(ValueError, match=message):
            parse_executor(spec)
    with pytest.raises(ValueError, match="group_stages cuts a fixed G rule's layered groups"):
        EngineConfig(schedule="chunked", group_stages=2)
    with pytest.raises(ValueError, match="contention"):
        lp_jax.LLM("tiny-qwen3-moe", "chunked", executor="sim:cpu:pp=2", **ENGINE)
    assert np.isfinite(PipelineSpec().link_Bps)
