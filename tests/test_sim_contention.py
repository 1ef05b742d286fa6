"""The CPU's host/device contention measured from a serving run's iterations: the estimator on
hand-computed cases, and on a simulated run whose contention is known (the estimator inverts the
simulator's timeline)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lp_jax
from lp_jax.bench.calibrate import _predictor, serve_timed
from lp_jax.sim.contention import CONTENTION_MAX, fit_contention, implied_contention, serving_iterations
from lp_jax.sim.cost_model import DeviceParams, Peaks
from tests.test_sim_engine import make_table

ms = 1e-3


def test_implied_contention_hand_computed():
    # period = device + c (host + read-back): 5 = 3 + c (1.5 + 0.5) -> 1; 3.5 = 3 + c 2 -> 0.25; 3 -> 0.
    assert implied_contention([5.0, 3.5, 3.0], [3.0, 3.0, 3.0], [1.5, 1.5, 1.5], [0.5] * 3) == pytest.approx(
        [1.0, 0.25, 0.0])
    with pytest.raises(ValueError, match="positive"):
        implied_contention([1.0], [1.0], [0.0], [0.0])


def test_fit_contention_median_clipped_and_default():
    period = np.array([3.0, 3.2, 3.4, 3.6, 30.0])  # the last interrupted by other work: the median ignores it
    fit = fit_contention(period, [3.0] * 5, [1.0] * 5, [1.0] * 5)
    assert fit["contention"] == pytest.approx(0.2)  # (3.4 - 3) / 2
    assert fit["iterations"] == 5 and fit["p90"] > 5
    # Faster than the device alone: no contention, not a negative one; far slower: at most CONTENTION_MAX.
    assert fit_contention([2.0] * 5, [3.0] * 5, [1.0] * 5, [1.0] * 5)["contention"] == 0.0
    assert fit_contention([30.0] * 5, [3.0] * 5, [1.0] * 5, [1.0] * 5)["contention"] == CONTENTION_MAX
    # Too few device-bound iterations to say: the default, and how many there were.
    assert fit_contention([5.0] * 4, [3.0] * 4, [1.0] * 4, [1.0] * 4, default=0.7) == dict(contention=0.7,
                                                                                         iterations=4)


def test_serving_iterations_pairs_each_iteration_with_the_step_that_read_it_back():
    def step(it, fetched, host, wait, got):
        return dict(iteration=it, fetched=fetched, plan=f"plan {it}", contexts=[it], host_s=host, wait_s=wait,
                    got_s=got)

    steps = [step(0, None, 1.0, None, None),  # nothing read back yet
             step(1, 0, 1.1, 2.0, 10.0),       # 0 back at 10
             step(2, 1, 1.2, 3.0, 14.0),       # 1 back at 14, after waiting: device-bound, period 4
             step(3, 2, 1.3, 0.0, 16.0),       # 2 back without waiting: host-bound, left out
             step(5, 4, 1.4, 1.0, 25.0)]       # 4 back (3 was read back by a step that dispatched nothing)
    device = {"plan 1": 2.5}
    period, dev, host, readback = serving_iterations(steps, lambda plan, ctx: device[plan] + ctx[0] - 1, 0.5)
    assert period.tolist() == [4.0] and dev.tolist() == [2.5] and host.tolist() == [1.2] and readback.tolist() == [0.5]
    assert [a.size for a in serving_iterations(steps[:1], None, 0.5)] == [0, 0, 0, 0]


@pytest.mark.parametrize("contention", [0.0, 0.4, 1.0])
def test_contention_measured_on_a_simulated_run_is_the_simulators(contention):
    """A simulated run with a known contention, timed as calibration times a real one: its
    device-bound iterations give back that contention (the device 4 ms and more an iteration, the
    host 0.5 ms plus 0.1 ms per launch, the read-back 0.3 ms)."""
    table = make_table("tiny-qwen3-moe", step_s=0.5 * ms, decode_s=0.0, prefill_s=0.0, launch_s=0.1 * ms,
                       readback_s=0.3 * ms)
    table = table.with_params(peaks=Peaks(1e30, 1e30), device_params=DeviceParams(
        call_s=2 * ms, layer_s=0.5 * ms, row_s=1e-6, head_s=0.5 * ms, head_row_s=0.0))
    table = table.with_params(host=dataclasses.replace(table.host, contention=contention))
    llm = lp_jax.LLM("tiny-qwen3-moe", "chunked", executor=table, max_model_len=128, max_num_seqs=4, token_budget=32)
    for n, m in ((40, 12), (10, 9), (70, 6), (5, 14)):
        llm.add_request([0] * n, max_tokens=m, ignore_eos=True)
    eng = llm.engine
    samples, steps = serve_timed(eng, lambda flight: eng.clock.wait_until(flight.ready_s))
    # Each step's host time is the simulator's dispatch: 0.5 ms and 0.1 ms per call launched.
    assert [s["seconds"] for s in samples] == pytest.approx([0.5 * ms + 0.1 * ms * s["calls"] for s in samples])
    period, device, host, readback = serving_iterations(steps, _predictor(table, llm.model_config, eng.config),
                                                        table.host.readback_s)
    assert period.size >= 10
    fit = fit_contention(period, device, host, readback)
    assert fit["contention"] == pytest.approx(contention, abs=1e-9)
