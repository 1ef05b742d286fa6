"""scripts/sim_vs_measured.py reads study folders: a simulated study replayed in the same simulator
reproduces every figure exactly (the replay takes each point's workload, seed, warm-up, SLO, KV
pool and routing from its folder, and builds one engine for all the study's configurations, as
the study did), and it writes the simulated points as study point folders."""

import json
import os

import pytest

from lp_jax.bench.study import run_study
from lp_jax.bench.study_spec import expand
from tests.script_loader import load_script

SPEC = dict(models=["tiny-qwen3-moe"], workloads=["sharegpt"],
            schedules=["layered:group_tokens=16", "chunked:token_budget=32"],
            rates={"layered:group_tokens=16": [20.0], "chunked:token_budget=32": [20.0, 50.0]},
            num_requests=6, warmup=1, executor="sim:cpu",
            engine=dict(max_num_seqs=8, max_model_len=128, max_prefill_tokens=128, max_cohort_tokens=128,
                        token_budget=128, row_buckets=[32, 136], num_pages=40),
            workload=dict(length_scale=1 / 64), slo=dict(ttft_s=0.05, tbt_s=0.01))


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study"))
    run_study(expand(SPEC), out, progress=False, log=lambda *_: None)
    return out


def test_replay_of_a_simulated_study_is_exact(study_dir, tmp_path):
    script = load_script("sim_vs_measured")
    replays = script.replays_of(study_dir)
    assert [(r.label, r.rate) for r in replays] == [("chunked:token_budget=32", 20.0), ("chunked:token_budget=32", 50.0),
                                                     ("layered:group_tokens=16", 20.0)]
    assert all(len(r.configs) == 2 for r in replays)  # the study's shared engine: both schedules
    simulated = script.simulate(replays, "sim:cpu")
    rows = script.compare_rows(replays, [s.summary for s in simulated])
    for row in rows:
        assert row["row_buckets"]["measured"] == row["row_buckets"]["simulated"]
        for _, name, _ in script.METRICS:
            assert row[name]["measured"] == pytest.approx(row[name]["simulated"], rel=1e-12), (row["label"], name)
    out = str(tmp_path / "sim")
    script.write(out, script.markdown(rows, study_dir), rows, replays, simulated)
    point = os.path.join(out, "points", replays[2].folder)
    assert sorted(os.listdir(point)) == ["point.json", "requests.jsonl", "summary.json", "vllm_result.json"]
    with open(os.path.join(point, "point.json")) as f:
        record = json.load(f)
    assert record["spec"]["executor"].startswith("simulated, cost table cpu/tiny-qwen3-moe")
    assert record["engine"]["num_pages"] == 40
    with open(os.path.join(out, "sim_vs_measured.md")) as f:
        assert "| layered:group_tokens=16 | 20 |" in f.read()


def test_a_folder_with_no_runs_is_refused(tmp_path):
    with pytest.raises(ValueError, match="neither a compare folder"):
        load_script("sim_vs_measured").replays_of(str(tmp_path))
