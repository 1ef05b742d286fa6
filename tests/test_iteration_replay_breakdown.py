"""scripts/iteration_replay_breakdown.py on a small synthetic trace: its features read the plan
shapes and the host gap as written, and its residual fit recovers a known cost of the longest
decode context in mixed iterations."""

import numpy as np

from tests.script_loader import load_script

breakdown = load_script("iteration_replay_breakdown")


def synthetic_rows(n: int, rng) -> list[dict]:
    """n iterations, pipelined (i dispatched 0.2 ms after i - 2's read-back), half of them with a
    512-token chunk; 4-12 decodes at contexts 2K-40K."""
    rows, end = [], [0.0, 0.01]
    for i in range(n):
        contexts = [int(c) for c in rng.integers(2_000, 40_000, rng.integers(4, 13))]
        prefill = [[i, 512 * i, 512 * (i + 1), False, [0, 48]]] if i % 2 else []
        start = end[-2] + 2e-4
        end.append(end[-1] + 0.02)
        rows.append(dict(iteration=i, start_s=start, end_s=end[-1], decode_contexts=contexts, prefill=prefill))
    return rows


def test_features_and_host_gap():
    rows = synthetic_rows(40, np.random.default_rng(0))
    f = breakdown.features(rows)
    assert f["decodes"].tolist() == [len(r["decode_contexts"]) for r in rows[1:]]
    assert f["longest"].tolist() == [max(r["decode_contexts"]) for r in rows[1:]]
    assert f["prefill_tokens"].tolist() == [512 * bool(r["prefill"]) for r in rows[1:]]
    assert np.isnan(f["host_gap_s"][0]) and np.allclose(f["host_gap_s"][1:], 2e-4)


def test_residual_fit_recovers_the_longest_context_cost():
    rng = np.random.default_rng(1)
    rows = synthetic_rows(400, rng)
    f = breakdown.features(rows)
    simulated = 0.030 + 1e-3 * rng.random(f["decodes"].size)
    mixed = (f["prefill_tokens"] > 0) & (f["decodes"] >= 4)
    # Known: mixed iterations take -3 ms + 6 ms per 10K keys of their longest decode longer.
    measured = simulated + np.where(mixed, -3e-3 + 6e-3 * f["longest"] / 1e4, 0.0)
    times = dict(measured=measured, simulated=simulated)
    (fit,) = [r for r in breakdown.residual_fits(times, f)
              if r["iterations"] == "prefill + >= 4 decodes" and list(r["ms_per_10k"]) == ["longest"]]
    assert abs(fit["intercept_ms"] + 3.0) < 1e-6 and abs(fit["ms_per_10k"]["longest"] - 6.0) < 1e-6
    groups = {g["group"]: g for g in breakdown.breakdown(times, f)}
    assert groups["decode-only"]["err_p50"] == 0.0 and groups["with prefill"]["err_p50"] < 0
    assert "| all |" in breakdown.markdown(list(groups.values()))
