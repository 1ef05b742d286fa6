"""The simulator under tensor / expert parallelism: one device's share of the work, the measured
all-reduce per layer, and the refusal of a split engine on a table without a measured all-reduce."""

from __future__ import annotations

import pytest

import lp_jax
from lp_jax.model.config import get_preset
from lp_jax.parallel.collectives import AllReduceCost, layer_all_reduce_s
from lp_jax.sim.expert_load import UniformExpertLoad
from lp_jax.sim.work import WorkModel
from tests.test_sim_engine import make_table

ENGINE = dict(max_model_len=128, max_num_seqs=8, max_prefill_tokens=64, max_cohort_tokens=64, token_budget=32,
              row_buckets=(16, 72))


def _work(name, backend, tp=1, ep=1):
    cfg = get_preset(name)
    load = UniformExpertLoad(cfg.num_experts, cfg.num_experts_per_tok) if cfg.is_moe else None
    return WorkModel(cfg, 2, backend, 512, load, lambda rows: 16, tp=tp, ep=ep)


@pytest.mark.parametrize("backend", ["pallas", "reference"])
def test_one_device_does_its_share_of_the_work(backend):
    one, tp2, ep2 = (_work("tiny-qwen3-moe", backend, *s) for s in ((1, 1), (2, 1), (1, 2)))
    cfg = get_preset("tiny-qwen3-moe")
    w1, wt, we = (w.layer_works(16, [100] * 8, [(0, 8)])["full"] for w in (one, tp2, ep2))
    router = cfg.router_params() * 2
    assert wt.dense_bytes == pytest.approx((w1.dense_bytes - router) / 2 + router)  # router whole
    assert wt.attn_bytes == pytest.approx(w1.attn_bytes / 2) and wt.attn_flops == pytest.approx(w1.attn_flops / 2)
    assert wt.expert_bytes == pytest.approx(w1.expert_bytes / 2) and we.expert_bytes == pytest.approx(w1.expert_bytes / 2)
    assert we.expert_flops == pytest.approx(w1.expert_flops / 2) and we.dense_bytes == w1.dense_bytes


def _simulated_executor(tp, all_reduce, tmp_path):
    table = make_table("tiny-qwen3-moe").with_params(all_reduce=all_reduce)
    path = table.save(str(tmp_path / f"table_{tp}.json"))
    llm = lp_jax.LLM("tiny-qwen3-moe", "chunked", executor=f"sim:{path}", tp=tp, **ENGINE)
    llm.generate([[1] * 40] * 6, max_tokens=8)
    return llm.engine.executor


def test_a_split_engine_pays_its_measured_all_reduces(tmp_path):
    cost = AllReduceCost(2, latency_s=50e-6, bus_Bps=10e9)
    one = _simulated_executor(1, None, tmp_path)
    free = _simulated_executor(2, AllReduceCost(2, 0.0, 1e30).to_json(), tmp_path)
    paid = _simulated_executor(2, cost.to_json(), tmp_path)
    assert free.device_busy_s < one.device_busy_s  # each device does half of the attention and experts
    assert paid.device_busy_s > free.device_busy_s
    assert paid.collective_s(16) == pytest.approx(
        layer_all_reduce_s(cost, get_preset("tiny-qwen3-moe"), 2, 1, 16, paid.work.dtype_bytes))


def test_a_split_engine_needs_a_measured_all_reduce(tmp_path):
    with pytest.raises(ValueError, match="has no measured all-reduce.*measure_collectives.py"):
        _simulated_executor(2, None, tmp_path)
