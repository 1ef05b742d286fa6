"""`lp-jax study`: the spec's points, resume (finished points skipped, a half-written one redone),
the budget stop, the tar of new points, the interleaved order, the summary's aggregation, and
one engine switching schedules on the same weights. Tiny model, 4 requests a point; engine
options as in tests/test_bench_cli.py so the executables compile once for the whole run."""

import csv
import json
import math
import os
import tarfile

import numpy as np
import pytest

import lp_jax
from lp_jax.bench.study import POINT_FILES, TMP_SUFFIX, estimate_s, run_study
from lp_jax.bench.study_spec import expand
from lp_jax.bench.study_summary import write_summary
from lp_jax.cli import main
from lp_jax.engine.config import EngineConfig

ENGINE = dict(max_num_seqs=8, max_model_len=128, max_prefill_tokens=128, max_cohort_tokens=128, token_budget=128,
              row_buckets=[32, 136])
LAYERED, CHUNKED = "layered:group_tokens=16", "chunked:token_budget=32"
SPEC = dict(models=["tiny-qwen3-moe"], workloads=["sharegpt"], schedules=[LAYERED, CHUNKED],
            rates={LAYERED: [40.0], CHUNKED: [40.0, 80.0]}, repeats=2, num_requests=4, warmup=1, engine=ENGINE,
            workload=dict(length_scale=1 / 64), slo=dict(ttft_s=0.5, tbt_s=0.1))
# Rate-major, alternating per block: rate 40 repeat 0 (L C), repeat 1 (C L); rate 80 (C), (C).
ORDER = [(LAYERED, 40.0, 0), (CHUNKED, 40.0, 0), (CHUNKED, 40.0, 1), (LAYERED, 40.0, 1),
         (CHUNKED, 80.0, 0), (CHUNKED, 80.0, 1)]


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def study():
    return expand(json.loads(json.dumps(SPEC)))


@pytest.fixture(scope="module")
def done(study, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study"))
    tar = os.path.join(out, "..", "new.tar")
    run = run_study(study, out, tar_new=tar, progress=False, log=quiet)
    return out, tar, run


def test_points_are_interleaved_and_named(study):
    assert [(p.config.label, p.rate, p.repeat) for p in study.points] == ORDER
    assert study.points[0].folder == "tiny-qwen3-moe/sharegpt/layered_group_tokens-16/r40.00/rep0"
    assert study.points[4].spec["engine"]["token_budget"] == 32 and study.points[4].spec["workload"]["rate"] == 80.0


def test_every_point_runs_in_order_with_its_files(done, study):
    out, _, run = done
    assert run.finished == study.points and not run.skipped and not run.left and run.stopped is None
    for p in study.points:
        folder = os.path.join(out, p.folder)
        assert sorted(os.listdir(folder)) == sorted(POINT_FILES)
        record = json.loads(open(os.path.join(folder, "point.json")).read())
        assert record["spec"] == p.spec and record["wall_s"] > 0
        summary = json.loads(open(os.path.join(folder, "summary.json")).read())
        assert summary["label"] == p.config.label and summary["repeat"] == p.repeat
        assert summary["schedule"] == p.config.schedule and summary["options"]["token_budget"] == \
            p.config.options["token_budget"]
        assert summary["compiles_during_serving"] == 0


def test_tar_holds_exactly_the_new_points(done, study):
    out, tar, _ = done
    with tarfile.open(tar) as t:
        files = {m.name for m in t.getmembers() if m.isfile()}
    assert files == {f"{p.folder}/{name}" for p in study.points for name in POINT_FILES}


def test_resume_skips_finished_points_and_redoes_a_half_written_one(done, study, tmp_path):
    out, _, _ = done
    first, cut = study.points[0], study.points[3]
    mtime = os.path.getmtime(os.path.join(out, first.folder, "summary.json"))
    os.remove(os.path.join(out, cut.folder, "vllm_result.json"))  # a point that lost a file
    os.makedirs(os.path.join(out, study.points[5].folder) + TMP_SUFFIX)  # a leftover of a killed command
    tar = str(tmp_path / "again.tar")
    run = run_study(study, out, tar_new=tar, progress=False, log=quiet)
    assert run.finished == [cut] and len(run.skipped) == 5
    assert os.path.getmtime(os.path.join(out, first.folder, "summary.json")) == mtime
    assert not os.path.exists(os.path.join(out, study.points[5].folder) + TMP_SUFFIX)
    assert sorted(os.listdir(os.path.join(out, cut.folder))) == sorted(POINT_FILES)
    with tarfile.open(tar) as t:
        assert {os.path.dirname(m.name) for m in t.getmembers() if m.isfile()} == {cut.folder}


def test_a_finished_point_with_other_settings_is_refused(done):
    out, _, _ = done
    changed = expand(json.loads(json.dumps(dict(SPEC, num_requests=5))))
    with pytest.raises(ValueError, match="other settings.*workload"):
        run_study(changed, out, progress=False, log=quiet)


def test_budget_stops_before_a_point_that_would_not_fit(study, tmp_path):
    """A clock that moves 10 s a reading: the first point (estimated 30 s + its span) starts at 0 s
    of a 35 s budget and takes 10 s; at 30 s the second (another schedule, estimated from the
    first: 10 s) would end past it."""
    readings = iter(range(0, 10_000, 10))
    tar = str(tmp_path / "new.tar")
    run = run_study(study, str(tmp_path / "out"), budget_s=35, tar_new=tar, started=0, progress=False,
                    log=quiet, clock=lambda: next(readings))
    assert run.finished == study.points[:1] and run.left == study.points[1:]
    assert run.stopped.startswith("budget: 30 s spent of 35 s")
    with tarfile.open(tar) as t:
        assert {os.path.dirname(m.name) for m in t.getmembers() if m.isfile()} == {study.points[0].folder}


def test_estimate_from_finished_points_by_hand(study):
    p = study.points[4]  # chunked at 80 req/s: arrival span 3 / 80 s
    like = dict(spec=dict(study.points[1].spec), wall_s=12.0, window_s=2.0)
    other = dict(spec=dict(study.points[0].spec), wall_s=100.0, window_s=1.0)  # layered: not like it
    assert estimate_s(p, [])[0] == pytest.approx(3 / 80 * 1.5 + 30)
    assert estimate_s(p, [like, other])[0] == pytest.approx(10.0 + 2.0)
    # Only another schedule's point: its overhead (99 s) + its window (1 s) x 1.15.
    assert estimate_s(p, [other])[0] == pytest.approx(99.0 + 1.0 * 1.15)
    quick = dict(like, wall_s=1.5, window_s=0.01)
    assert estimate_s(p, [quick])[0] == pytest.approx(1.49 + 3 / 80)


def test_summary_aggregates_repeats(done, study):
    out, _, _ = done
    text, paths = write_summary(study, out)
    with open(paths[1]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["configuration"], float(r["rate"])) for r in rows] == [(LAYERED, 40.0), (CHUNKED, 40.0), (CHUNKED, 80.0)]
    reps = [json.loads(open(os.path.join(out, p.folder, "summary.json")).read())["ttft_s"]["mean"]
            for p in study.points if p.config.label == CHUNKED and p.rate == 80.0]
    row = rows[2]
    assert float(row["ttft_s.mean_mean"]) == pytest.approx(np.mean(reps))
    assert float(row["ttft_s.mean_std"]) == pytest.approx(np.std(reps, ddof=1))
    assert (float(row["ttft_s.mean_min"]), float(row["ttft_s.mean_max"])) == (min(reps), max(reps))
    assert "## tiny-qwen3-moe on sharegpt" in text and f"| {CHUNKED} | 80 | 2 |" in text


def test_cli_summary_and_spec_errors(done, tmp_path, capsys):
    out, _, _ = done
    spec_path = tmp_path / "s.json"
    spec_path.write_text(json.dumps(SPEC))
    assert main(["study", str(spec_path), "--out", out, "--summary"]) == 0
    assert "6 of 6 points finished" in capsys.readouterr().out
    assert main(["study", str(spec_path), "--out", str(tmp_path / "never_ran"), "--summary"]) == 2
    assert "no results folder" in capsys.readouterr().err and not (tmp_path / "never_ran").exists()
    for bad, message in ((dict(SPEC, speed=1), "unknown key"), (dict(SPEC, rates={LAYERED: [1.0]}), "missing"),
                         (dict(SPEC, workloads=["no/such.csv"]), "neither a preset"),
                         (dict(SPEC, engine=dict(ENGINE, page_sise=8)), "unknown engine option"),
                         (dict(SPEC, rates=[0]), "bad rate")):
        spec_path.write_text(json.dumps(bad))
        assert main(["study", str(spec_path), "--out", str(tmp_path / "o"), "--summary"]) == 2
        assert message in capsys.readouterr().err


def test_schedules_switched_on_one_engine_match_fresh_engines():
    """Greedy outputs of chunked and layered on one shared engine, in turn, equal those of an
    engine built for each alone (same seed, so the same weights)."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in ENGINE.items()}
    chunked, layered = (EngineConfig(schedule="chunked", **dict(options, token_budget=32)),
                        EngineConfig(schedule="layered", **dict(options, group_tokens=16)))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 500, n).tolist() for n in (5, 40, 17)]
    shared = lp_jax.LLM.sharing("tiny-qwen3-moe", [chunked, layered])
    for config in (chunked, layered, chunked):
        shared.use(config)
        assert shared.engine.config.schedule == config.schedule
        got = [o.token_ids for o in shared.generate(prompts, max_tokens=6)]
        fields = {k: getattr(config, k) for k in EngineConfig.__dataclass_fields__ if k != "schedule"}
        fields["row_buckets"] = shared.engine.executor.buckets
        alone = lp_jax.LLM("tiny-qwen3-moe", config.schedule, **fields)
        assert got == [o.token_ids for o in alone.generate(prompts, max_tokens=6)]


def test_reconfigure_refuses_what_the_executor_cannot_serve():
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in ENGINE.items()}
    chunked = EngineConfig(schedule="chunked", **options)
    llm = lp_jax.LLM.sharing("tiny-qwen3-moe", [chunked])
    with pytest.raises(ValueError, match="layered configuration needs an executor built for layered"):
        llm.use(EngineConfig(schedule="layered", **options))
    with pytest.raises(ValueError, match="page_size"):
        llm.use(EngineConfig(schedule="chunked", **dict(options, page_size=8)))
    llm.add_request([1, 2, 3], max_tokens=4)
    with pytest.raises(ValueError, match="in flight"):
        llm.use(chunked)
    with pytest.raises(ValueError, match="must agree on max_num_seqs"):
        lp_jax.LLM.sharing("tiny-qwen3-moe", [chunked, EngineConfig(schedule="layered", **dict(options, max_num_seqs=4))])


def test_compilation_cache_writes_every_executable(tmp_path, persistent_compilation_cache):
    import jax
    import jax.numpy as jnp

    from lp_jax.bench.study import use_compilation_cache

    use_compilation_cache(str(tmp_path / "cache"))
    jax.jit(lambda x: x * 3 + 1).lower(jnp.ones(7)).compile()  # far below the default 1 s minimum
    assert os.listdir(tmp_path / "cache")


def test_other_tests_compile_without_the_persistent_cache(monkeypatch):
    """conftest turns jax's cache code off for every test that does not ask for the cache: jax
    0.11.2 otherwise sends each compile through it (hashing a cache key) even with no directory."""
    import jax
    import jax.numpy as jnp
    from jax._src import compiler

    through_cache = []
    monkeypatch.setattr(compiler, "_compile_and_write_cache", lambda *a, **k: through_cache.append(a))
    assert jax.jit(lambda x: x * 5 - 2)(jnp.ones(3)).tolist() == [3.0] * 3
    assert not through_cache
