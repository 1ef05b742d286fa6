"""The simulator's cost model: the committed tables' fit error on their own calibration grids,
the fit recovering known constants, the expert-load formulas against sampling, and table lookup."""

from __future__ import annotations

import numpy as np
import pytest

from lp_jax.model.config import get_preset
from lp_jax.sim.cost_model import CostTable, DeviceParams, HostParams, Peaks, available_tables, load_table
from lp_jax.sim.expert_load import UniformExpertLoad
from lp_jax.sim.fit import error_summary, errors, fit_table, predict
from lp_jax.sim.work import WorkModel, visible_pairs

TABLES = available_tables()


@pytest.mark.parametrize("device,model", sorted(TABLES))
def test_committed_table_fit_error_on_its_own_grid(device, model):
    table = load_table(device, model)
    assert table.label.startswith(f"simulated, cost table {device}/{model} (")
    if table.provenance == "datasheet":
        assert not table.samples and "never run" in table.source
        return
    assert table.samples, "a fitted table keeps its calibration samples"
    recomputed = error_summary(table, table.samples)
    for kind, summary in recomputed.items():
        assert summary == pytest.approx(table.fit[kind]), kind
    device_err = recomputed["iteration"]
    if table.provenance == "derived":  # the H100 engine cases
        assert device_err["max_abs_rel_err"] < 0.05
    else:  # measured on a machine shared with other work: see docs/simulator.md
        assert device_err["median_abs_rel_err"] < 0.3


def _work(model):
    cfg = get_preset(model)
    load = UniformExpertLoad(cfg.num_experts, cfg.num_experts_per_tok) if cfg.is_moe else None
    return cfg, WorkModel(cfg, 4, "pallas", 512, load, lambda rows: 16 if rows < 64 else 64)


def _sample(work, lo, n, rows, ctx, prefills, seconds=0.0):
    works = work.layer_works(rows, ctx, prefills)
    return dict(kind="step", layers=work.layer_counts(lo, n), work={t: w._asdict() for t, w in works.items()},
                seconds=seconds)


def test_fit_recovers_the_constants_that_made_the_samples():
    cfg, work = _work("tiny-gpt-oss")
    truth = CostTable(model=cfg.name, device="t", device_kind="t", provenance="measured", backend="pallas",
                      dtype="float32", memory_bytes=2**30, peaks=Peaks(1e11, 1e12), host=HostParams(),
                      device_params=DeviceParams(call_s=3e-4, layer_s=2e-5, row_s=5e-8, dense_bw=0.6, dense_flop=0.4,
                                                 attn_bw=0.3, attn_flop=0.2, expert_bw=0.8, expert_flop=0.5,
                                                 head_s=1e-4, head_row_s=2e-7, overlap=3.0),
                      source="test", date="-", commit="-")
    samples = []
    for rows, ctx, prefills in ((8, [10] * 8, []), (64, [300] * 16, [(0, 48)]), (256, [], [(0, 250)]),
                                (1024, [2000] * 4, [(0, 1000)]), (16, [4000] * 16, []), (512, [], [(2000, 2500)])):
        for lo, n in ((0, 4), (1, 2), (2, 1)):
            s = _sample(work, lo, n, rows, ctx, prefills)
            samples.append(dict(kind="iteration", calls=[s], head=None, seconds=0.0))
    for s in samples:
        s["seconds"] = predict(truth, s)
    fitted = fit_table(truth.with_params(device_params=DeviceParams()), samples)
    assert np.max(np.abs(errors(fitted, samples))) < 0.02


def test_uniform_expert_load_matches_sampling():
    E, K, rng = 16, 4, np.random.default_rng(0)
    load = UniformExpertLoad(E, K)
    for n, block in ((1, 4), (6, 4), (40, 8)):
        distinct, tiles = [], []
        for _ in range(3000):
            ids = np.concatenate([rng.choice(E, K, replace=False) for _ in range(n)])
            rows = np.bincount(ids, minlength=E)
            distinct.append(np.count_nonzero(rows))
            tiles.append(np.sum(-(-rows // block)))
        assert load.expected_distinct(n) == pytest.approx(np.mean(distinct), rel=0.02)
        assert load.expected_distinct(n - 1, (1,)) == load.expected_distinct(n)
        assert load.expected_tiles(n, (), block) == pytest.approx(np.mean(tiles), rel=0.02)


def test_visible_pairs_counts_every_query_key_pair():
    for start, end, window in ((0, 10, None), (3, 17, None), (0, 40, 8), (30, 41, 8), (5, 6, 1)):
        want = sum(min(p + 1, window or 10**9) for p in range(start, end))
        assert visible_pairs(start, end, window) == want


def test_load_table_says_what_exists():
    with pytest.raises(ValueError, match="devices with a table for it"):
        load_table("nonexistent", "qwen3-30b-a3b")
    with pytest.raises(ValueError, match="no cost table for"):
        load_table("", "no-such-model")
    assert load_table("", "qwen3-30b-a3b").provenance != "datasheet"
