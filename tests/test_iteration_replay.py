"""Traced study points (`trace = true`): iterations.jsonl in every point folder, each row's plan
rebuilt exactly, and the plan-by-plan replay on a cost table (lp_jax.bench.iteration_replay,
scripts/sim_vs_measured.py). The study runs on the simulator with the committed CPU table of the
tiny model, so it takes seconds; a simulated run replayed on its own table must come out near
zero error, which checks the replay's timing model against the simulator's two timelines."""

import json
import os

import numpy as np
import pytest

from lp_jax.bench import iteration_replay
from lp_jax.bench.iteration_log import ITERATIONS_FILE, read_iterations
from lp_jax.bench.study import run_study
from lp_jax.bench.study_spec import expand
from tests.script_loader import load_script

ENGINE = dict(max_num_seqs=8, max_model_len=128, max_prefill_tokens=128, max_cohort_tokens=128, token_budget=128,
              row_buckets=[32, 136])
LAYERED, CHUNKED = "layered:group_tokens=16", "chunked:token_budget=32"
SPEC = dict(models=["tiny-qwen3-moe"], workloads=["sharegpt"], schedules=[LAYERED, CHUNKED], rates=[40.0],
            num_requests=12, warmup=1, engine=ENGINE, workload=dict(length_scale=1 / 32),
            slo=dict(ttft_s=0.5, tbt_s=0.1), executor="sim:cpu", trace=True)


@pytest.fixture(scope="module")
def study_out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("traced"))
    study = expand(json.loads(json.dumps(SPEC)))
    run_study(study, out, progress=False, log=lambda *_: None)
    return out, study


def test_trace_must_be_a_boolean():
    with pytest.raises(ValueError, match="trace must be true or false"):
        expand(dict(SPEC, trace="yes"))
    untraced = expand(dict(SPEC, trace=False))
    assert all("trace" not in p.spec for p in untraced.points)  # old points keep their spec


def test_every_traced_point_writes_its_iterations(study_out):
    out, study = study_out
    for p in study.points:
        rows = read_iterations(os.path.join(out, p.folder, ITERATIONS_FILE))
        with open(os.path.join(out, p.folder, "summary.json")) as f:
            summary = json.load(f)
        # Every iteration, the warm-up's included (the summary counts the measured window's).
        assert len(rows) >= summary["iterations"] > 10
        assert [r["iteration"] for r in rows] == list(range(len(rows)))
        assert all(r["end_s"] >= r["start_s"] for r in rows)
        assert any(r["prefill"] for r in rows) and any(r["decode_contexts"] for r in rows)
        # A request's decode context grows by one per iteration it decodes in (ids are not
        # recorded per decode row, so: the largest context never falls by more than the prompts allow).
        assert all(c >= 2 for r in rows for c in r["decode_contexts"])
        for r in rows:
            for rid, s, e, completes, layers in r["prefill"]:
                assert 0 <= s < e and 0 <= layers[0] < layers[1] <= 4


def test_a_rows_plan_is_the_recorded_one(study_out):
    out, study = study_out
    rows = read_iterations(os.path.join(out, study.points[0].folder, ITERATIONS_FILE))
    for row in rows:
        plan = iteration_replay.plan_of(row, 4)
        assert [r.num_computed + 1 for r in plan.decodes] == row["decode_contexts"]
        assert [(w.request.request_id, w.start, w.end) for w in plan.prefills] == [tuple(p[:3]) for p in row["prefill"]]
        assert [s["layers"] for s in row["segments"]] == [[g.layer_lo, g.layer_hi] for g in plan.segments()]
        assert [w.completes_prompt for w in plan.prefills] == [p[3] for p in row["prefill"]]


def test_a_simulated_run_replays_on_its_own_table_near_zero(study_out):
    import lp_jax

    out, study = study_out
    for p in study.points:
        llm = lp_jax.LLM("tiny-qwen3-moe", p.config.schedule, executor="sim:cpu", **p.config.options)
        times = iteration_replay.replay(read_iterations(os.path.join(out, p.folder, ITERATIONS_FILE)),
                                        llm.engine.executor)
        dist = iteration_replay.distribution(times)
        assert dist["all"]["count"] == times["measured"].size
        assert abs(dist["all"]["p50"]) < 0.1, dist["all"]


def test_sim_vs_measured_adds_the_per_iteration_distribution(study_out, tmp_path, capsys):
    sim_vs_measured = load_script("sim_vs_measured")
    out, study = study_out
    assert sim_vs_measured.main([out, "--executor", "sim:cpu", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "Per-iteration error" in text and f"{LAYERED}, all rates" in text
    with open(tmp_path / "per_iteration_error.json") as f:
        saved = json.load(f)
    assert {f"{LAYERED}, all rates", f"{CHUNKED}, all rates"} <= set(saved)
    assert np.isfinite(saved[f"{CHUNKED}, all rates"]["all"]["p99"])
