"""`lp-jax study SPEC`: run a study's points, each in its own folder, resumably, within a budget.

A study (lp_jax.bench.study_spec) spans many device commands of 10 minutes, on machines that keep
nothing: so

- a point is finished when its folder exists: its files (requests.jsonl, summary.json,
  vllm_result.json, as `lp-jax bench` writes them, and point.json, its resolved spec and timings;
  with the spec's `trace = true` also iterations.jsonl, lp_jax.bench.iteration_log)
  are written into a temporary folder beside it that is renamed last, so a command killed
  mid-point leaves no half point behind, only a temporary folder that the next command removes
  before it redoes that point;
- finished points are skipped (`redo=True` runs them again); a finished point whose spec differs
  from the study's now is refused, not silently reused;
- `budget_s`: before each point, the runner estimates how long it will take (`estimate_s`) and
  stops cleanly if it would not finish within the budget (counted from `started`);
- one engine per model per command (`LLM.sharing`): every point of a model, whatever its schedule,
  runs on the same weights and compiled executables; JAX's persistent compilation cache
  (`use_compilation_cache`) lets the next command on a warm machine skip the compiles;
- `tar_new`: the points this command finished, in one tar (written at exit, also on a budget
  stop or an exception), since a machine's deep folders do not come back from it.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import tarfile
import time
from dataclasses import dataclass, field

from lp_jax.bench.study_spec import Point, Study

POINT_FILES = ("requests.jsonl", "summary.json", "vllm_result.json", "point.json")
TMP_SUFFIX = ".tmp"
# A point nothing has been measured like yet: it takes its arrival span, stretched by this for the
# queue it may leave behind, plus this much for its warm-up and idle window (seconds).
FIRST_POINT_STRETCH, FIRST_POINT_OVERHEAD_S = 1.5, 30.0
OTHER_SCHEDULE_STRETCH = 1.15


def is_finished(out: str, point: Point) -> bool:
    folder = os.path.join(out, point.folder)
    return all(os.path.isfile(os.path.join(folder, name)) for name in POINT_FILES)


def finished_record(out: str, point: Point) -> dict | None:
    """point.json of a finished point (None if the point is not finished)."""
    if not is_finished(out, point):
        return None
    with open(os.path.join(out, point.folder, "point.json")) as f:
        return json.load(f)


def check_same_spec(record: dict, point: Point) -> None:
    """ValueError when a finished point was run from a different spec than the study's now."""
    if record["spec"] != point.spec:
        diff = sorted(k for k in set(record["spec"]) | set(point.spec) if record["spec"].get(k) != point.spec.get(k))
        raise ValueError(f"finished point {point.folder} was run with other settings ({', '.join(diff)} differ): "
                         "use --redo to run it again with the spec's, or another out folder")


def arrival_span_s(point: Point) -> float:
    """Seconds over which the point's requests arrive, on average: (n - 1) / rate."""
    w = point.spec["workload"]
    return 0.0 if math.isinf(point.rate) else (w["num_requests"] - 1) / point.rate


def estimate_s(point: Point, history: list[dict]) -> tuple[float, str]:
    """(seconds the point will take, how that was estimated).

    history: point.json records of finished points. From those of the same model, schedule and
    workload (source and size): the longest overhead (wall time - measured window) plus the larger
    of this point's arrival span and the shortest measured window among them. A run's window is
    its arrival span or, above the schedule's knee, the time its work takes, which does not shrink
    with the rate: so the shortest window seen bounds that work from above, and the estimate errs
    long. With no such record: the arrival span x FIRST_POINT_STRETCH + FIRST_POINT_OVERHEAD_S.
    """
    def same(r):
        s, p = r["spec"], point.spec
        return (s["model"], s["schedule"], s["workload"]["source"], s["workload"]["num_requests"]) == \
            (p["model"], p["schedule"], p["workload"]["source"], p["workload"]["num_requests"])

    def same_workload(r):
        s, p = r["spec"], point.spec
        return (s["model"], s["workload"]["source"], s["workload"]["num_requests"]) == \
            (p["model"], p["workload"]["source"], p["workload"]["num_requests"])

    like = [r for r in history if same(r)]
    span = arrival_span_s(point)
    if like:
        overhead = max(r["wall_s"] - r["window_s"] for r in like)
        window = max(span, min(r["window_s"] for r in like))
        return overhead + window, f"from {len(like)} finished point(s) like it"
    # Another schedule on the same model and workload: its overhead, and its longest window
    # stretched by OTHER_SCHEDULE_STRETCH (a schedule past its knee drains longer).
    near = [r for r in history if same_workload(r)]
    if near:
        overhead = max(r["wall_s"] - r["window_s"] for r in near)
        window = max(span, max(r["window_s"] for r in near)) * OTHER_SCHEDULE_STRETCH
        return overhead + window, f"from {len(near)} finished point(s) of another schedule, window x {OTHER_SCHEDULE_STRETCH:g}"
    return span * FIRST_POINT_STRETCH + FIRST_POINT_OVERHEAD_S, "first of its kind: arrival span x 1.5 + 30 s"


@dataclass
class StudyRun:
    """What one command did: points finished now, skipped (finished before), left (budget), and why it stopped."""

    finished: list[Point] = field(default_factory=list)
    skipped: list[Point] = field(default_factory=list)
    left: list[Point] = field(default_factory=list)
    stopped: str | None = None


def use_compilation_cache(path: str) -> None:
    """JAX's persistent compilation cache in `path`, every executable written (no minimum compile
    time or size), so that the next process on this machine loads instead of compiling."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)  # in case the caller's environment turned it off
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    compilation_cache.reset_cache()  # in case a compile earlier in this process initialised it elsewhere


def write_point(out: str, point: Point, result, record: dict, iterations=None) -> None:
    """The point's files into a temporary folder, then renamed into place (last, in one step);
    iterations: the run's IterationRecords (a traced point), written as iterations.jsonl."""
    from lp_jax.bench.iteration_log import ITERATIONS_FILE, write_iterations
    from lp_jax.bench.runner import write_bench

    final = os.path.join(out, point.folder)
    tmp = final + TMP_SUFFIX
    shutil.rmtree(tmp, ignore_errors=True)
    write_bench(result, tmp)
    if iterations is not None:
        write_iterations(iterations, os.path.join(tmp, ITERATIONS_FILE))
    with open(os.path.join(tmp, "point.json"), "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    shutil.rmtree(final, ignore_errors=True)  # a point being redone
    os.replace(tmp, final)


def tar_points(out: str, points: list[Point], path: str) -> str:
    """One tar of the points' folders (paths inside relative to out, so that `tar -xf PATH -C OUT`
    puts them back), written to a temporary name and renamed."""
    tmp = path + TMP_SUFFIX
    with tarfile.open(tmp, "w") as tar:
        for p in points:
            tar.add(os.path.join(out, p.folder), arcname=p.folder)
    os.replace(tmp, path)
    return path


def run_point(llm, point: Point, workload):
    """Serve one point on `llm` (set to the point's configuration); its BenchResult."""
    from lp_jax.bench.runner import run_bench

    s = point.spec
    # A traced point keeps its own iterations' records (the engine's trace, without row tokens).
    llm.engine.trace = bool(s.get("trace"))
    llm.engine.records = []
    return run_bench(llm, workload, ttft_bound_s=s["slo"]["ttft_s"], tbt_bound_s=s["slo"]["tbt_s"],
                     label=point.config.label, warmup=s["warmup"], progress=False, goodput_slo_ms=s["goodput_slo_ms"])


def run_study(study: Study, out: str, *, redo: bool = False, budget_s: float | None = None,
              tar_new: str | None = None, started: float | None = None, progress: bool = True, log=print,
              clock=time.perf_counter) -> StudyRun:
    """Run the study's unfinished points in its order (see the module doc); what was done.
    started: the clock reading the budget counts from (default: now)."""
    from lp_jax.bench.compare import engine_configs
    from lp_jax.bench.runner import make_llm, prepare_out_dir
    from lp_jax.bench.workload import make_workload

    started = clock() if started is None else started
    prepare_out_dir(out)
    run = StudyRun()
    history = []
    todo = []
    for p in study.points:
        shutil.rmtree(os.path.join(out, p.folder) + TMP_SUFFIX, ignore_errors=True)  # a point cut short before
        record = finished_record(out, p)
        if record is not None and not redo:
            check_same_spec(record, p)
            history.append(record)
            run.skipped.append(p)
        else:
            todo.append(p)
    log(f"study {study.path}: {len(study.points)} points, {len(run.skipped)} finished before, {len(todo)} to run"
        + (f", budget {budget_s:.0f} s" if budget_s is not None else ""))
    llm, llm_model = None, None
    try:
        for i, point in enumerate(todo):
            estimate, how = estimate_s(point, history)
            elapsed = clock() - started
            if budget_s is not None and elapsed + estimate > budget_s:
                run.left = todo[i:]
                run.stopped = (f"budget: {elapsed:.0f} s spent of {budget_s:.0f} s, the next point ({point.folder}) "
                               f"would take ~{estimate:.0f} s ({how})")
                log(f"stopping: {run.stopped}; {len(run.left)} point(s) left for the next command")
                break
            if llm_model != point.model:
                llm = None  # free the previous model's weights and KV pool first
                gc.collect()
                # Every configuration of the model in the study, so that each command builds the same executor.
                configs = engine_configs([p.config for p in study.points if p.model == point.model])
                configs = list({c: None for c in configs})  # each once, in order
                llm = make_llm(point.model, configs, point.model, progress, log,
                               "model" if point.spec["executor"] == "real" else point.spec["executor"])
                llm_model = point.model
            llm.use(engine_configs([point.config])[0])
            w = dict(point.spec["workload"], source=point.workload)
            workload = make_workload(context_limit=llm.engine_config.model_len(llm.model_config), **w)
            t = clock()
            result = run_point(llm, point, workload)
            wall = clock() - t
            result.summary.update(repeat=point.repeat, study_point=point.folder)
            record = dict(spec=point.spec, folder=point.folder, wall_s=wall, window_s=result.summary["duration_s"],
                          estimate_s=estimate, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            write_point(out, point, result, record, llm.engine.records if point.spec.get("trace") else None)
            llm.engine.records = []
            history.append(record)
            run.finished.append(point)
            left = todo[i + 1:]
            eta = sum(estimate_s(p, history)[0] for p in left)
            s = result.summary
            log(f"[point {i + 1}/{len(todo)}] {point.folder}: {s['num_finished']}/{s['num_requests']} finished, "
                f"SLO attainment {100 * s['slo_attainment']:.0f}%, mean TTFT {_s(s['ttft_s']['mean'])}; "
                f"{wall:.1f} s (estimated {estimate:.0f} s); {len(left)} left, ETA ~{eta:.0f} s")
        else:
            run.stopped = None
    finally:
        if tar_new is not None:
            tar_points(out, run.finished, tar_new)
            log(f"wrote {tar_new}: {len(run.finished)} point(s) finished by this command")
    return run


def _s(x) -> str:
    return "n/a" if x is None else f"{x:.3g} s"
