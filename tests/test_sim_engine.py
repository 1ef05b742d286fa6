"""The simulated engine: the same schedule decisions as the real engine when requests arrive at the
same iterations, and the virtual clock and pipelined host/device timeline on a hand-computed case."""

from __future__ import annotations

import dataclasses

import pytest

import lp_jax
from lp_jax.model.config import get_preset
from lp_jax.sim.clock import VirtualClock
from lp_jax.sim.cost_model import CostTable, DeviceParams, HostParams, LayerWork, Peaks
from tests.engine_helpers import run_with_arrivals
from tests.test_engine_schedules import ENGINE, MAX_TOKENS, served, workload

GIB = 2**30


def make_table(model: str, **host) -> CostTable:
    """A made-up CPU-like table (the decisions must not depend on its numbers)."""
    return CostTable(model=model, device="test", device_kind="test device", provenance="datasheet",
                     backend="reference", dtype="float32", memory_bytes=64 * GIB, peaks=Peaks(1e10, 1e11),
                     device_params=DeviceParams(call_s=2e-4, layer_s=3e-5, row_s=1e-6),
                     host=HostParams(**host), source="tests", date="-", commit="-")


def decisions(llm):
    return [(r.iteration, r.decode_ids, r.prefill, r.prefill_layers, r.preempted_ids) for r in llm.engine.records]


@pytest.mark.parametrize("schedule", ["prefill_first", "chunked", "layered"])
def test_simulated_engine_makes_the_real_engines_decisions(schedule, tmp_path):
    real, real_outs = served("tiny-qwen3-moe", schedule)
    cfg = get_preset("tiny-qwen3-moe")
    prompts, arrivals = workload(cfg.vocab_size)
    path = make_table(cfg.name).save(str(tmp_path / "table.json"))
    sim = lp_jax.LLM(cfg, schedule, executor=f"sim:{path}", num_groups=3 if schedule == "layered" else None, **ENGINE)
    assert sim.engine.blocks.num_pages == real.engine.blocks.num_pages
    outs = run_with_arrivals(sim, prompts, arrivals, max_tokens=MAX_TOKENS)
    assert decisions(sim) == decisions(real)
    assert [len(o.token_ids) for o in outs] == [len(o.token_ids) for o in real_outs]
    assert [o.expert_bytes > 0 for o in outs] == [True] * len(outs)
    assert sim.executor_label == "simulated, cost table test/tiny-qwen3-moe (datasheet)"


def test_virtual_clock():
    clock = VirtualClock()
    assert clock() == 0.0
    assert clock.advance(1.5) == 1.5
    clock.wait_until(1.0)
    assert clock() == 1.5
    clock.wait_until(4.0)
    assert clock() == 4.0
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1e-9)


def test_pipelined_timeline_hand_computed(tmp_path):
    """One 10-token prompt, 3 output tokens, chunked, on a table whose roofline terms vanish:
    a call costs 1 ms + 1 ms per layer (4 layers), the sampling call 0.5 ms; the host 0.2 ms per
    iteration, 0.1 ms per launch, 0.05 ms per read-back. Iteration i + 1 is launched while i runs,
    so the device runs back to back (5.5 ms an iteration) and each token reaches the host 0.05 ms
    after its iteration ends: 5.8 + 0.05, 11.3 + 0.05, 16.8 + 0.05 ms."""
    ms = 1e-3
    table = make_table("tiny-qwen3", step_s=0.2 * ms, decode_s=0.0, prefill_s=0.0, launch_s=0.1 * ms,
                       readback_s=0.05 * ms)
    table = table.with_params(peaks=Peaks(1e30, 1e30), device_params=DeviceParams(
        call_s=1 * ms, layer_s=1 * ms, row_s=0.0, head_s=0.5 * ms, head_row_s=0.0))
    path = table.save(str(tmp_path / "table.json"))
    llm = lp_jax.LLM("tiny-qwen3", "chunked", executor=f"sim:{path}", max_model_len=64, max_num_seqs=16,
                     token_budget=32, trace=True)
    (out,) = llm.generate([[1] * 10], max_tokens=3)
    assert out.token_times_s == pytest.approx([5.85 * ms, 11.35 * ms, 16.85 * ms], abs=1e-12)
    assert llm.engine.executor.device_busy_s == pytest.approx(3 * 5.5 * ms)
    assert table.layer_s(LayerWork(8, 1e6, 1e6, 1e6, 1e6)) == pytest.approx(1 * ms)

    # With contention 1 (a CPU: host and device share cores) the device loses the host's time
    # while both are busy: 0.4 ms of dispatch per iteration and 0.05 ms of each read-back that
    # falls while the next iteration runs (the last read-back finds the device idle).
    table = table.with_params(host=dataclasses.replace(table.host, contention=1.0))
    llm = lp_jax.LLM("tiny-qwen3", "chunked", executor=table, max_model_len=64, max_num_seqs=16, token_budget=32)
    (out,) = llm.generate([[1] * 10], max_tokens=3)
    assert out.token_times_s == pytest.approx([6.65 * ms, 12.6 * ms, 18.15 * ms], abs=1e-12)


def test_calibrated_routing_shows_chunkings_expert_rereads():
    """One 8192-token prompt of the full-size Qwen3 under the paper's routing: layered reads each
    layer's experts for the whole prompt at once, chunked-512 once per chunk. The simulated engine
    accounts both ways exactly as the routing model predicts: distinct experts per call (16 x
    d(512) against d(8192): the paper's 13.4x loads of a prompt's experts), and row tiles."""
    from lp_jax.sim.expert_load import expert_load

    cfg = get_preset("qwen3-30b-a3b")
    load = expert_load(cfg.num_experts, cfg.num_experts_per_tok, "qwen3-paper")
    per_layer = cfg.num_layers * cfg.expert_params() * 2  # bf16 bytes of one expert in every layer
    spent = {}
    for schedule, options, calls in (("layered", {}, [(8192,)]), ("chunked", dict(token_budget=512), [(512,)] * 16)):
        llm = lp_jax.LLM("qwen3-30b-a3b", schedule, executor="sim:h200", routing="qwen3-paper", **options)
        out = llm.generate([[0] * 8192], max_tokens=1, ignore_eos=True)[0]
        ex = llm.engine.executor
        assert out.expert_bytes == pytest.approx(per_layer * sum(load.expected_distinct(0, c) for c in calls))
        assert out.expert_streamed_bytes == pytest.approx(per_layer * sum(ex.work.row_tiles(0, c) for c in calls))
        spent[schedule] = out.expert_bytes
    assert spent["chunked"] / spent["layered"] == pytest.approx(13.4, rel=0.03)
    uniform = expert_load(cfg.num_experts, cfg.num_experts_per_tok, "uniform")
    # Under uniform routing a 512-token chunk already loads every expert: no saving to show.
    assert 16 * uniform.expected_distinct(0, (512,)) / uniform.expected_distinct(0, (8192,)) == pytest.approx(16)
