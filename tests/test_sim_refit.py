"""Refitting measured tables (lp_jax.sim.refit): the first H200 grid's shapes read back from its
labels reproduce the work it stored, the new cost-model terms (occupancy, launch bound) and their
switches, and a refit's record of the error before it."""

import os

import numpy as np
import pytest

from lp_jax.sim.cost_model import DeviceParams, LayerWork, load_table, occupancy
from lp_jax.sim.fit import PAR_UNITS, _has_units, predict
from lp_jax.sim.refit import legacy_shapes, rederive, refit

# The first H200 grid's tables as they came back (their samples carry no shapes).
FIRST_GRID = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "calibration_h200_2026-12-02")
LEGACY_FIELDS = ("rows", "dense_bytes", "dense_flops", "attn_bytes", "attn_flops", "expert_bytes", "expert_flops")


@pytest.mark.parametrize("model", ["qwen3-30b-a3b", "gpt-oss-20b"])
def test_legacy_shapes_reproduce_the_stored_work(model):
    table = load_table(os.path.join(FIRST_GRID, f"h200_{model}.json"), model)
    legacy = [s for s in table.samples if s["kind"] == "iteration"]
    assert legacy and all("shape" not in c for s in legacy for c in s["calls"])
    # At the tile the first grid was described with (64 query rows), the work is what it stored.
    new = rederive(table.with_params(samples=legacy), 64)
    for old, s in zip(legacy, new):
        assert s["launch_bound"]
        for c_old, c_new in zip(old["calls"], s["calls"]):
            for t, w in c_old["work"].items():
                for k in LEGACY_FIELDS:
                    assert c_new["work"][t][k] == pytest.approx(w[k], rel=1e-12), (old["case"], k)


def test_legacy_labels_it_does_not_know_are_refused():
    assert legacy_shapes("decode B=2 ctx=7", 0) == ([7, 7], [])
    assert legacy_shapes("prefill 9 rows after 20", 0) == ([], [(20, 29)])
    assert legacy_shapes("prefill 8 rows as 4 repeated-token requests", 0) == ([], [(0, 2)] * 4)
    assert legacy_shapes("mixed 3 decodes + 5 prefill rows", 11) == ([11] * 3, [(0, 5)])
    assert legacy_shapes("range [1, 3) 16 rows", 0) == ([], [(0, 16)])
    with pytest.raises(ValueError, match="no shape known"):
        legacy_shapes("served something", 0)


def test_occupancy_slows_only_calls_with_fewer_units_than_the_device_needs():
    assert occupancy(4, 0.0) == 1.0 and occupancy(0, 100.0) == 1.0  # off / unknown
    assert occupancy(200, 100.0) == 1.0 and occupancy(25, 100.0) == 4.0
    table = load_table(os.path.join(FIRST_GRID, "h200_qwen3-30b-a3b.json"), "qwen3-30b-a3b")
    p = DeviceParams(**{**vars(table.device_params), "attn_par": 128.0, "expert_par": 0.0})
    t = table.with_params(device_params=p)
    few, many = (LayerWork(8, 0, 0, 1e8, 1e9, 0, 0, u, 0) for u in (4, 512))
    assert t.layer_s(few) > t.layer_s(many)
    base = t.layer_s(LayerWork(8, 0, 0, 0, 0, 0, 0, 4, 0))
    assert t.layer_s(few) - base == pytest.approx(32 * (t.layer_s(many) - base))


def test_launch_bound_applies_to_calibration_samples_on_a_gpu_only():
    table = load_table(os.path.join(FIRST_GRID, "h200_qwen3-30b-a3b.json"), "qwen3-30b-a3b")
    step = dict(kind="step", layers={"full": 1, "sliding": 0}, work={"full": LayerWork(8, 0, 0, 0, 0)._asdict()})
    sample = dict(kind="iteration", calls=[step] * 3, head=None, seconds=1.0)
    device = predict(table, sample)
    assert device < 3 * table.host.launch_s
    assert predict(table, dict(sample, launch_bound=True)) == pytest.approx(3 * table.host.launch_s)
    cpu = table.with_params(backend="reference")
    assert predict(cpu, dict(sample, launch_bound=True)) == pytest.approx(predict(cpu, sample))


def test_refit_records_the_error_before_and_fits_occupancy_where_units_are_known():
    table = load_table(os.path.join(FIRST_GRID, "h200_gpt-oss-20b.json"), "gpt-oss-20b")
    its, host = ([s for s in table.samples if s["kind"] == k] for k in ("iteration", "host"))
    new = refit(table.with_params(samples=its[::3] + host[:30]))  # a third of the grid: seconds, not a minute
    assert new.prefill_q_tile == 16
    assert set(new.fit["before_refit"]) == {"host", "iteration"}
    assert all(_has_units([s for s in new.samples if s["kind"] == "iteration"], f) for f in PAR_UNITS.values())
    assert not _has_units([dict(kind="iteration", calls=[dict(work={"full": LayerWork(8, 0, 0, 0, 0)._asdict()})])],
                          "attn_units")
    # The grid's error after the refit, recorded as a fit records it.
    assert np.isfinite(new.fit["iteration"]["median_abs_rel_err"])
