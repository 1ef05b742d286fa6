"""A study's spec (a TOML or JSON file) and the points it expands to.

A study is a grid: models x workloads x schedules x rates x repeats, with engine options, the
number of requests, SLOs and the executor shared by every point. The format is documented in
docs/studies.md; in short (TOML):

    models = ["qwen3-30b-a3b"]
    workloads = ["arxiv-long"]                   # presets, or CSV traces (paths relative to the spec)
    schedules = ["layered", "chunked:token_budget=512"]
    rates = [1.0, 1.5]                           # or a table: one list per schedule
    repeats = 1
    num_requests = 200
    [engine]                                     # EngineConfig options of every schedule
    routing = "qwen3-paper"
    [slo]
    ttft_s = 10.0
    tbt_s = 0.125
    trace = true                                 # (top level) each point also writes iterations.jsonl

With `trace = true` the engine keeps an IterationRecord per iteration (lp_jax.bench.iteration_log):
each point folder then holds iterations.jsonl, every iteration's plan shape and measured start
and end, which `scripts/sim_vs_measured.py` replays plan by plan with a cost table.

Every point has its own folder, OUT/<model>/<workload>/<schedule>/r<rate>/rep<k>/, and the
resolved spec of the point (`Point.spec`: everything that determines its run) is written into it.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from dataclasses import dataclass

from lp_jax.bench.compare import ENGINE_OPTIONS, Config, defaults_for, parse_config
from lp_jax.bench.interleave import ORDERS, interleaved_order
from lp_jax.bench.metrics import parse_goodput
from lp_jax.bench.workload import ARRIVALS, CONTEXT_POLICIES, PRESET_NAMES
from lp_jax.sim import parse_executor

TOP_KEYS = {"out", "models", "workloads", "schedules", "rates", "repeats", "order", "seed", "num_requests",
            "warmup", "executor", "slo_target", "engine", "workload", "slo", "description", "trace"}
WORKLOAD_KEYS = {"arrival", "cv", "length_scale", "context_policy"}
SLO_KEYS = {"ttft_s", "tbt_s", "goodput"}


@dataclass(frozen=True)
class Point:
    """One run of a study. folder: relative to the study's out folder; spec: the resolved spec
    (JSON-able) that point.json holds; config: the schedule and its engine options."""

    model: str
    workload: str
    config: Config
    rate: float
    repeat: int
    folder: str
    spec: dict


@dataclass(frozen=True)
class Study:
    """A loaded spec: where it came from, its out folder (None: not given), its points in run order
    (model by model, then workload by workload, each interleaved rate-major), and its SLO target."""

    path: str
    out: str | None
    points: list[Point]
    slo_target: float
    raw: dict


def slug(text: str) -> str:
    """A folder name for a model, workload or configuration label."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text.replace("=", "-")).strip("_") or "_"


def rate_folder(rate: float) -> str:
    return "rinf" if math.isinf(rate) else f"r{rate:.2f}"


def workload_slug(source: str) -> str:
    """A preset's name, or a CSV trace's file name without its extension."""
    return source if source in PRESET_NAMES else slug(os.path.splitext(os.path.basename(source))[0])


def load_spec(path: str) -> dict:
    """The spec file as a dict: TOML (.toml) or JSON (anything else). ValueError saying what is
    wrong with it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read the study spec {path}: {e.strerror or e}") from None
    try:
        spec = tomllib.loads(data.decode()) if path.endswith(".toml") else json.loads(data)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {e}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a study spec is a table (TOML) or an object (JSON)")
    return spec


def _list(spec: dict, key: str, kind=str) -> list:
    value = spec.get(key)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                           for v in value):
        raise ValueError(f"study spec: {key} must be a non-empty list of {kind.__name__ if kind is str else 'numbers'}, "
                         f"got {spec.get(key)!r}")
    return value


def _table(spec: dict, key: str, allowed: set[str] | None) -> dict:
    value = spec.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"study spec: [{key}] must be a table, got {value!r}")
    unknown = set(value) - allowed if allowed is not None else set()
    if unknown:
        raise ValueError(f"study spec: unknown key(s) in [{key}]: {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(allowed))}")
    return value


def _engine_value(key: str, value):
    if key not in ENGINE_OPTIONS:
        raise ValueError(f"study spec: unknown engine option {key!r} in [engine]; known: {', '.join(ENGINE_OPTIONS)}")
    return tuple(value) if isinstance(value, list) else value


def _rate(value) -> float:
    rate = float("inf") if value == "inf" else value
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ValueError(f"study spec: bad rate {value!r}: expected a number of requests/s > 0, or \"inf\"")
    return float(rate)


def _int(spec: dict, key: str, default: int, low: int) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"study spec: {key} must be an integer >= {low}, got {value!r}")
    return value


def _executor(text) -> str:
    """"real" (the engine's forward pass) or a simulator spec "sim[:DEVICE or PATH.json]"."""
    if text in ("real", "model"):
        return "real"
    try:
        parse_executor(str(text))
    except ValueError as e:
        raise ValueError(f"study spec: executor must be 'real' or 'sim[:DEVICE or PATH.json]': {e}") from None
    return str(text)


def expand(spec: dict, path: str = "<spec>") -> Study:
    """Check a spec and expand it to its points. ValueError naming the key and what it takes."""
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise ValueError(f"study spec: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(TOP_KEYS))}")
    base = os.path.dirname(os.path.abspath(path)) if path != "<spec>" else os.getcwd()
    models = _list(spec, "models")
    workloads = []
    for w in _list(spec, "workloads"):
        if w in PRESET_NAMES:
            workloads.append((w, w))
            continue
        p = os.path.expanduser(w)
        p = p if os.path.isabs(p) else os.path.join(base, p)
        if not os.path.isfile(p):
            raise ValueError(f"study spec: workload {w!r} is neither a preset ({', '.join(PRESET_NAMES)}) nor a CSV "
                             f"file (looked for {p})")
        workloads.append((w, p))  # as written (the point's spec: the same on every machine), as found
    labels = _list(spec, "schedules")
    if len(set(labels)) < len(labels):
        raise ValueError("study spec: a schedule is listed twice in schedules")
    raw_rates = spec.get("rates")
    if isinstance(raw_rates, dict):
        missing, extra = set(labels) - set(raw_rates), set(raw_rates) - set(labels)
        if missing or extra:
            raise ValueError("study spec: [rates] must have one list per schedule: "
                             + (f"missing {', '.join(sorted(missing))}" if missing else "")
                             + ("; " if missing and extra else "")
                             + (f"not in schedules: {', '.join(sorted(extra))}" if extra else ""))
        rates_of = {label: [_rate(r) for r in _list(raw_rates, label, object)] for label in labels}
    else:
        rates = [_rate(r) for r in _list(spec, "rates", object)]
        rates_of = {label: rates for label in labels}
    repeats = _int(spec, "repeats", 1, 1)
    order = spec.get("order", "alternate")
    if order not in ORDERS:
        raise ValueError(f"study spec: order must be one of {', '.join(ORDERS)}, got {order!r}")
    seed = _int(spec, "seed", 0, 0)
    executor = _executor(spec.get("executor", "real"))
    slo_target = spec.get("slo_target", 0.9)
    if isinstance(slo_target, bool) or not isinstance(slo_target, (int, float)) or not 0 < slo_target <= 1:
        raise ValueError(f"study spec: slo_target must be in (0, 1], got {slo_target!r}")
    engine = {k: _engine_value(k, v) for k, v in _table(spec, "engine", None).items()}
    workload_opts = _table(spec, "workload", WORKLOAD_KEYS)
    if workload_opts.get("arrival", "poisson") not in ARRIVALS:
        raise ValueError(f"study spec: [workload] arrival must be one of {', '.join(ARRIVALS)}")
    if workload_opts.get("context_policy", "drop") not in CONTEXT_POLICIES:
        raise ValueError(f"study spec: [workload] context_policy must be one of {', '.join(CONTEXT_POLICIES)}")
    slo = _table(spec, "slo", SLO_KEYS)
    goodput = parse_goodput(slo["goodput"]) if "goodput" in slo else None
    trace = spec.get("trace", False)
    if not isinstance(trace, bool):
        raise ValueError(f"study spec: trace must be true or false, got {trace!r}")

    points = []
    for model in models:
        d = defaults_for(model)
        common = dict(d.engine_options, **engine)
        configs = {label: parse_config(label, common) for label in labels}
        ttft_s, tbt_s = float(slo.get("ttft_s", d.ttft_bound_s)), float(slo.get("tbt_s", d.tbt_bound_s))
        if not (ttft_s > 0 and tbt_s > 0):
            raise ValueError("study spec: [slo] ttft_s and tbt_s must be > 0 seconds")
        num_requests = _int(spec, "num_requests", d.num_requests, 1)
        warmup = _int(spec, "warmup", d.warmup, 0)
        for given, source in workloads:
            workload = dict(source=given, num_requests=num_requests, arrival=workload_opts.get("arrival", "poisson"),
                            cv=float(workload_opts.get("cv", 1.0)), seed=seed,
                            length_scale=float(workload_opts.get("length_scale", d.length_scale)),
                            context_policy=workload_opts.get("context_policy", "drop"))
            for slot in interleaved_order(rates_of, repeats, order, seed):
                config = configs[slot.key]
                folder = os.path.join(slug(model), workload_slug(source), config.slug, rate_folder(slot.rate),
                                      f"rep{slot.repeat}")
                point_spec = dict(model=model, workload=dict(workload, rate=slot.rate), schedule=config.label,
                                  engine=dict(config.options, schedule=config.schedule), repeat=slot.repeat,
                                  slo=dict(ttft_s=ttft_s, tbt_s=tbt_s), goodput_slo_ms=goodput, warmup=warmup,
                                  executor=executor)
                if trace:  # only where set: points run before the key existed keep their spec
                    point_spec["trace"] = True
                points.append(Point(model, source, config, slot.rate, slot.repeat, folder,
                                    json.loads(json.dumps(point_spec))))
    out = spec.get("out")
    if out is not None and not isinstance(out, str):
        raise ValueError(f"study spec: out must be a folder path, got {out!r}")
    return Study(path, out, points, float(slo_target), spec)


def load_study(path: str) -> Study:
    return expand(load_spec(path), path)
