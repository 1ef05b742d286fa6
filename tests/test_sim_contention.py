"""The CPU's host/device contention from paired timings (lp_jax.sim.contention), on hand-computed
cases, and what a measured contention does to the simulator's pipelined timeline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import lp_jax
from lp_jax.sim.contention import CONTENTION_MAX, fit_contention, implied_contention
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
    assert fit["samples"] == 5 and fit["p90"] > 5
    # Faster than back to back: no contention, not a negative one; far slower: at most CONTENTION_MAX.
    assert fit_contention([2.0] * 5, [3.0] * 5, [1.0] * 5, [1.0] * 5)["contention"] == 0.0
    assert fit_contention([30.0] * 5, [3.0] * 5, [1.0] * 5, [1.0] * 5)["contention"] == CONTENTION_MAX
    # Too few samples to say: the default, and how many there were.
    assert fit_contention([5.0] * 4, [3.0] * 4, [1.0] * 4, [1.0] * 4, default=0.7) == dict(contention=0.7, samples=4)


@pytest.mark.parametrize("contention", [0.0, 0.4, 1.0])
def test_simulated_decode_period_is_device_plus_contention_times_host(contention):
    """One request decoding on a table whose roofline terms vanish: a decode iteration's device time
    is a 4-layer call (2 + 4 x 0.5 ms) and the sampling call (0.5 ms), 4.5 ms; the host 0.5 ms per
    iteration and 0.1 ms per launch (2 calls), the read-back 0.3 ms. Pipelined and device-bound,
    consecutive tokens are 4.5 + contention x (0.7 + 0.3) ms apart, which is the relation
    implied_contention inverts."""
    table = make_table("tiny-qwen3", step_s=0.5 * ms, decode_s=0.0, prefill_s=0.0, launch_s=0.1 * ms,
                       readback_s=0.3 * ms)
    table = table.with_params(peaks=Peaks(1e30, 1e30), device_params=DeviceParams(
        call_s=2 * ms, layer_s=0.5 * ms, row_s=0.0, head_s=0.5 * ms, head_row_s=0.0),
        host=dataclasses.replace(table.host, contention=contention))
    llm = lp_jax.LLM("tiny-qwen3", "chunked", executor=table, max_model_len=64, max_num_seqs=16, token_budget=32)
    (out,) = llm.generate([[1] * 10], max_tokens=8, ignore_eos=True)
    period = np.diff(out.token_times_s)[1:-1]  # the first and last iterations are not pipelined on both sides
    assert period == pytest.approx([(4.5 + contention * 1.0) * ms] * len(period), abs=1e-12)
    assert implied_contention(period, 4.5 * ms, 0.7 * ms, 0.3 * ms) == pytest.approx([contention] * len(period))
