"""The fidelity study's machinery, without a real engine: iteration times from records, and a
replay at the recorded iterations reproducing a run's plans and times exactly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lp_jax.bench.compare import DEMO, engine_configs, parse_config
from lp_jax.bench.fidelity import (KINDS, METRICS, _ArrivalLog, _shape, iteration_kind, iteration_times, markdown,
                                   replay, steady, summarise)
from lp_jax.bench.runner import make_llm, run_bench
from lp_jax.bench.workload import make_workload
from lp_jax.sim.cost_model import table_file


def test_iteration_times_busy_and_idle():
    r = lambda start, end: SimpleNamespace(start_s=start, end_s=end)  # noqa: E731
    # Pipelined (each dispatched before the last came back), then idle (dispatched after it).
    records = [r(0.0, 5.0), r(1.0, 9.0), r(6.0, 14.0), r(20.0, 23.0)]
    assert iteration_times(records) == pytest.approx([4.0, 5.0, 3.0])


@pytest.mark.parametrize("config", ["layered:group_tokens=64", "chunked:token_budget=64"])
def test_replay_at_the_recorded_iterations_reproduces_a_run(config):
    c = parse_config(config, DEMO.engine_options)
    table = table_file("cpu", "tiny-qwen3-moe")
    llm = make_llm("tiny-qwen3-moe", engine_configs([c]), config, False, lambda *_: None, executor=f"sim:{table}",
                   trace=True)
    log = _ArrivalLog(llm)
    run_bench(llm, make_workload("sharegpt", 16, rate=6.0, seed=2, length_scale=1 / 16, context_limit=512),
              ttft_bound_s=0.5, tbt_bound_s=0.1, warmup=2, progress=False)
    log.close()
    records = replay(table, c, log.log, "tiny-qwen3-moe")
    assert [_shape(r) for r in records] == [_shape(r) for r in llm.engine.records]
    # The bench added each request after reading the iteration in flight back, the replay as soon
    # as the iteration count is reached: times match where `steady` says.
    keep = steady(llm.engine.records, {it for it, _, _ in log.log})
    assert keep.sum() > len(keep) // 2
    assert iteration_times(llm.engine.records)[keep] == pytest.approx(iteration_times(records)[keep])


def test_iteration_kinds_and_their_errors_in_the_report():
    rec = lambda prefill, layers=(0, 4): SimpleNamespace(prefill=prefill, prefill_layers=layers)  # noqa: E731
    assert [iteration_kind(r, 4) for r in (rec([]), rec([(1, 0, 8)]), rec([(1, 0, 8)], (1, 3)))] == list(KINDS)
    metric = dict(real=0.01, sim=0.011, error=0.1)
    run = dict(repeat=0, config="chunked", rate=3.0, load_average=1.0, contention=0.4,
               **{f"{g}.{s}": metric for g, s in METRICS})
    by_kind = {"chunked": {KINDS[0]: [0.1, 0.2, 0.3], KINDS[1]: [-0.5], KINDS[2]: []}}
    summary = summarise([run], {"chunked": [0.1, 0.2, 0.3, -0.5]}, {"chunked": []}, by_kind)
    assert list(summary["chunked"]["per_kind"]) == [KINDS[0], KINDS[1]]  # a kind the runs never had is left out
    assert summary["chunked"]["per_kind"][KINDS[0]]["p50"] == pytest.approx(0.2)
    text = markdown(dict(spec=dict(model="m", length_scale=1 / 16, num_requests=4, rates=[3.0], repeats=1),
                         date="-", host_cpus=2, runs=[run], summary=summary))
    assert "| chunked | decode-only | 3 | +12 % | +20 % | +28 % |" in text
    assert "| 0 | chunked | 3 | 1.0 | 0.40 |" in text
