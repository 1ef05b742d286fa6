"""Fidelity of the simulator against the real engine on this machine, on held-out runs.

For every repeat x schedule x rate: calibrate a cost table on the real engine (lp_jax.bench.calibrate),
then right away serve a held-out workload (a seed the calibration never saw) for real and in the
simulator with that table, and compare

- end to end: mean and p99 TTFT, p50 and p99 TBT and TPOT, mean E2E (simulated / real - 1);
- per iteration: the real run replayed in the simulator with every request added at the
  iteration it was added for real (so the plans are the real ones, iteration by iteration), and
  each iteration's time compared: while the engine is busy (iteration i dispatched before i - 1
  was read back) the time from i - 1's tokens to i's, over the iterations `steady` keeps.

The machine is shared with other work, which makes CPU timings drift within minutes (2-3x
between minutes at load averages of 3-9 on 2 cores): each run is calibrated afresh just before it,
and the report gives every run, the load average around it, and the spread.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time

import numpy as np

from lp_jax.bench.runner import make_llm, run_bench
from lp_jax.engine.config import EngineConfig
from lp_jax.bench.calibrate import Calibrator, calibrate_with
from lp_jax.bench.compare import DEMO, parse_config
from lp_jax.bench.workload import make_workload

METRICS = (("ttft_s", "mean"), ("ttft_s", "p99"), ("tbt_s", "p50"), ("tbt_s", "p99"), ("tpot_s", "p50"),
           ("tpot_s", "p99"), ("e2e_s", "mean"))
CONFIGS = ("layered:group_tokens=64", "chunked:token_budget=64")
PERCENTILES = (1, 10, 25, 50, 75, 90, 99)
# Consecutive iterations summed for the windowed error: a real iteration's time is when its
# tokens reached the host after the last ones did, and the OS's scheduling of the host thread
# on a loaded machine moves time between neighbours (1 ms then 11 ms for two 6 ms iterations).
WINDOW = 8


@dataclasses.dataclass
class FidelitySpec:
    """What one fidelity study runs (lengths x length_scale of ShareGPT, rates in requests/s)."""

    model: str = "tiny-qwen3-moe"
    configs: tuple[str, ...] = CONFIGS
    rates: tuple[float, ...] = (3.0, 6.0)
    num_requests: int = 48
    length_scale: float = 1 / 16
    repeats: int = 3
    seed: int = 1000  # held-out workloads: seed + 100 * repeat + rate index
    ttft_bound_s: float = 0.5
    tbt_bound_s: float = 0.1
    warmup: int = 4
    quick_grid: bool = False


class _ArrivalLog:
    """Wraps an LLM's add_request to log (iteration, prompt, max_tokens) of every request it adds."""

    def __init__(self, llm):
        self.llm, self.log, self._add = llm, [], llm.add_request
        llm.add_request = self

    def __call__(self, prompt, max_tokens=16, **kw):
        self.log.append((self.llm.engine.state.iteration, len(prompt), max_tokens))
        return self._add(prompt, max_tokens=max_tokens, **kw)

    def close(self):
        self.llm.add_request = self._add


def _slug(config: str) -> str:
    return config.replace(":", "_").replace("=", "-")


def _shape(record) -> tuple:
    """An iteration's plan without request ids (the real engine's ids continue from calibration)."""
    return len(record.decode_ids), [(s, e) for _, s, e in record.prefill], record.prefill_layers


KINDS = ("decode-only", "whole model + prefill", "layered range step")


def iteration_kind(record, num_layers: int) -> str:
    """One of KINDS: no prefill; a prefill through every layer (chunked, or layered's last group
    with the decodes); a prefill through a layer range (layered)."""
    if not record.prefill:
        return KINDS[0]
    return KINDS[1] if tuple(record.prefill_layers) == (0, num_layers) else KINDS[2]


def steady(records, added_at: set[int]) -> np.ndarray:
    """bool per iteration after the first (as iteration_times): busy (dispatched before the last
    came back) and no request added at it, the one before or the one after. A replay reproduces
    those times: the real loop adds a request after reading the iteration in flight back, the
    replay as soon as the iteration count is reached, which moves the neighbours' read-backs."""
    return np.array([b.start_s < a.end_s and not {b.iteration - 1, b.iteration, b.iteration + 1} & added_at
                     for a, b in zip(records, records[1:])], bool)


def iteration_times(records) -> np.ndarray:
    """Seconds of each iteration after the first (see the module docstring), from IterationRecords."""
    out = []
    for prev, rec in zip(records, records[1:]):
        busy = rec.start_s < prev.end_s
        out.append(rec.end_s - prev.end_s if busy else rec.end_s - rec.start_s)
    return np.asarray(out)


def simulated_llm(table_path: str, config, model: str):
    """A traced simulated LLM of `config` on the cost table at table_path."""
    import lp_jax

    return lp_jax.LLM(model, config.schedule, executor=f"sim:{table_path}", trace=True, **config.options)


def drive(sim, arrivals: list[tuple[int, int, int]]) -> None:
    """Step `sim` until done, adding each (iteration, prompt tokens, max tokens) request of the real
    run at the iteration it was added there."""
    zeros = np.zeros(max(n for _, n, _ in arrivals), np.int32)
    k = 0
    while k < len(arrivals) or sim.has_unfinished():
        while k < len(arrivals) and arrivals[k][0] <= sim.engine.state.iteration:
            sim.add_request(zeros[:arrivals[k][1]], max_tokens=arrivals[k][2], ignore_eos=True)
            k += 1
        sim.step()


def replay(table_path: str, config, arrivals: list[tuple[int, int, int]], model: str):
    """The simulated engine driven with the real run's requests at the real run's iterations;
    its IterationRecords."""
    sim = simulated_llm(table_path, config, model)
    drive(sim, arrivals)
    return sim.engine.records


def _engine_config(label: str) -> EngineConfig:
    """The EngineConfig of a configuration label on the CPU demo's engine options."""
    config = parse_config(label, DEMO.engine_options)
    return EngineConfig(schedule=config.schedule, **config.options)


def run_fidelity(spec: FidelitySpec, out_dir: str, log=print, progress: bool = False) -> dict:
    """Every repeat x schedule x rate (see the module docstring); writes fidelity.json into out_dir
    and returns it."""
    os.makedirs(out_dir, exist_ok=True)
    engines = {c: make_llm(spec.model, [_engine_config(c)], c, progress, log, trace=True) for c in spec.configs}
    layered = next(llm for llm in engines.values() if llm.engine_config.schedule == "layered")
    runs, per_iteration, windowed = [], {c: [] for c in spec.configs}, {c: [] for c in spec.configs}
    by_kind = {c: {k: [] for k in KINDS} for c in spec.configs}
    L = layered.model_config.num_layers
    for rep in range(spec.repeats):
        for c in spec.configs:
            config = parse_config(c, DEMO.engine_options)
            for i, rate in enumerate(spec.rates):
                t = time.perf_counter()
                table = calibrate_with(Calibrator(layered), quick=spec.quick_grid, progress=progress)
                path = table.save(os.path.join(out_dir, f"table_{rep}_{_slug(c)}_{rate:g}.json"))
                run = table.fit["host_run"]
                log(f"repeat {rep}, {c} at {rate:g} req/s: calibrated in {time.perf_counter() - t:.0f} s (grid median "
                    f"|error| {100 * table.fit['iteration']['median_abs_rel_err']:.0f} %, host run simulated / real "
                    f"{run['simulated_s'] / run['real_s']:.2f}, contention {table.host.contention:.2f}), load average "
                    f"{os.getloadavg()[0]:.1f}")
                workload = make_workload("sharegpt", spec.num_requests, rate=rate, seed=spec.seed + 100 * rep + i,
                                         length_scale=spec.length_scale, context_limit=layered.engine_config.model_len(
                                             layered.model_config))
                real_llm = engines[c]
                first = len(real_llm.engine.records)
                arrivals = _ArrivalLog(real_llm)
                load = os.getloadavg()[0]
                try:
                    real = run_bench(real_llm, workload, ttft_bound_s=spec.ttft_bound_s,
                                     tbt_bound_s=spec.tbt_bound_s, warmup=spec.warmup, progress=progress).summary
                finally:
                    arrivals.close()
                start_iteration = real_llm.engine.records[first].iteration
                sim_llm = make_llm(spec.model, [_engine_config(c)], c, False, lambda *_: None, executor=f"sim:{path}")
                sim = run_bench(sim_llm, workload, ttft_bound_s=spec.ttft_bound_s, tbt_bound_s=spec.tbt_bound_s,
                                warmup=spec.warmup, progress=False).summary
                shifted = [(it - start_iteration, n, m) for it, n, m in arrivals.log]
                sim_records = replay(path, config, shifted, spec.model)
                real_records = real_llm.engine.records[first:]
                same = [_shape(r) for r in real_records] == [_shape(r) for r in sim_records]
                real_t, sim_t = iteration_times(real_records), iteration_times(sim_records)
                keep = steady(real_records, {it for it, _, _ in arrivals.log}) if same else []
                real_t, sim_t = (real_t[keep], sim_t[keep]) if same else (real_t, sim_t)
                errors = (sim_t / real_t - 1.0) if same else np.array([])
                per_iteration[c] += errors.tolist()
                if same:
                    kinds = [iteration_kind(r, L) for r in real_records[1:]]
                    for kind, e in zip([k for k, kept in zip(kinds, keep) if kept], errors.tolist()):
                        by_kind[c][kind].append(e)
                    w = len(real_t) // WINDOW * WINDOW
                    windowed[c] += (sim_t[:w].reshape(-1, WINDOW).sum(1) / real_t[:w].reshape(-1, WINDOW).sum(1)
                                    - 1.0).tolist()
                row = dict(repeat=rep, config=c, rate=rate, load_average=load, load_after=os.getloadavg()[0],
                           table=os.path.basename(path), contention=table.host.contention, same_plans=same,
                           iteration_error_median=float(np.median(errors)) if errors.size else None)
                for group, stat in METRICS:
                    r, s = real[group][stat], sim[group][stat]
                    row[f"{group}.{stat}"] = dict(real=r, sim=s, error=(s / r - 1.0) if r else None)
                runs.append(row)
                log(f"  {c} at {rate:g} req/s: " + ", ".join(
                    f"{g.split('_')[0].upper()} {st} {100 * row[f'{g}.{st}']['error']:+.0f} %" for g, st in METRICS)
                    + f"; per-iteration median {100 * (row['iteration_error_median'] or 0):+.0f} %")
    result = dict(spec=dataclasses.asdict(spec), date=datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), host_cpus=os.cpu_count(), runs=runs, per_iteration_errors=per_iteration,
        window_errors=windowed, per_kind_errors=by_kind, summary=summarise(runs, per_iteration, windowed, by_kind))
    with open(os.path.join(out_dir, "fidelity.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def _percentiles(errors) -> dict:
    e = np.asarray(errors)
    return dict(iterations=int(e.size), **{f"p{q}": float(np.percentile(e, q)) for q in PERCENTILES}) if e.size else {}


def summarise(runs: list[dict], per_iteration: dict, windowed: dict, by_kind: dict | None = None) -> dict:
    """Per configuration and metric: the median error over repeats and rates and its range; the
    per-iteration and per-window error percentiles, and the per-iteration ones of each iteration
    kind (by_kind: {configuration: {kind: errors}})."""
    out = {}
    for c in sorted({r["config"] for r in runs}):
        mine = [r for r in runs if r["config"] == c]
        entry = {}
        for group, stat in METRICS:
            e = np.array([r[f"{group}.{stat}"]["error"] for r in mine if r[f"{group}.{stat}"]["error"] is not None])
            entry[f"{group}.{stat}"] = dict(median=float(np.median(e)), min=float(e.min()), max=float(e.max()),
                                            within_10pct=int(np.sum(np.abs(e) <= 0.10)), runs=int(e.size))
        entry["per_iteration"] = _percentiles(per_iteration[c])
        entry["per_window"] = _percentiles(windowed[c])
        entry["per_kind"] = {k: _percentiles(e) for k, e in (by_kind or {}).get(c, {}).items() if e}
        out[c] = entry
    return out


def histogram(result: dict, path: str) -> str:
    """PNG of the relative errors of each configuration: per iteration, and per WINDOW iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, unit) for key, unit in (("per_iteration_errors", "iteration"),
                                            ("window_errors", f"{WINDOW} consecutive iterations")) if result.get(key)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (key, unit) in zip(axes[0], panels):
        for c, errors in result[key].items():
            ratio = np.clip(1.0 + np.asarray(errors), 1 / 16, 16)  # the tails, clipped to 16x either way
            ax.hist(np.log2(ratio), bins=np.linspace(-4, 4, 65), alpha=0.55, label=f"{c} ({len(ratio)})")
        ax.axvline(0, color="k", lw=0.8)
        ticks = [1 / 16, 1 / 4, 1 / 2, 1, 2, 4, 16]
        ax.set_xticks(np.log2(ticks), [f"{t:g}" for t in ticks])
        ax.set_xlabel(f"simulated / real time, one {unit}")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    fig.suptitle(f"Simulator error on held-out runs, {result['spec']['model']} on this CPU "
                 f"({result['host_cpus']} cores, shared), {result['date'][:10]} (log scale; tails clipped at 16x)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown(result: dict) -> str:
    """The fidelity tables (per configuration: each metric's median error and range over every
    repeat and rate; the per-iteration percentiles)."""
    spec = result["spec"]
    lines = [f"Held-out runs: {spec['model']}, ShareGPT lengths x {spec['length_scale']:g}, {spec['num_requests']} "
             f"requests per run at {', '.join(f'{r:g}' for r in spec['rates'])} requests/s, {spec['repeats']} "
             f"repeats (each calibrated just before its runs), {result['date']}, {result['host_cpus']} CPU cores "
             "shared with other work. Error = simulated / real - 1.", "",
             "| configuration | metric | median error | range over runs | runs within 10 % |", "|---|---|---|---|---|"]
    for c, entry in result["summary"].items():
        for group, stat in METRICS:
            m = entry[f"{group}.{stat}"]
            lines.append(f"| {c} | {group.split('_')[0].upper()} {stat} | {100 * m['median']:+.1f} % | "
                         f"{100 * m['min']:+.0f} .. {100 * m['max']:+.0f} % | {m['within_10pct']}/{m['runs']} |")
    lines += ["", f"Per-iteration error (the real runs replayed iteration by iteration; windows: {WINDOW} "
              "consecutive iterations summed):", "",
              "| configuration | unit | count | " + " | ".join(f"p{q}" for q in PERCENTILES) + " |",
              "|---|---|---|" + "---|" * len(PERCENTILES)]
    for c, entry in result["summary"].items():
        for unit, key in (("iteration", "per_iteration"), (f"{WINDOW} iterations", "per_window")):
            p = entry[key]
            if p:
                lines.append(f"| {c} | {unit} | {p['iterations']} | " + " | ".join(
                    f"{100 * p[f'p{q}']:+.0f} %" for q in PERCENTILES) + " |")
    kinds = [(c, k, p) for c, entry in result["summary"].items() for k, p in entry.get("per_kind", {}).items()]
    if kinds:
        lines += ["", "Per-iteration error by iteration kind:", "",
                  "| configuration | kind | count | p10 | p50 | p90 |", "|---|---|---|---|---|---|"]
        lines += [f"| {c} | {k} | {p['iterations']} | " + " | ".join(f"{100 * p[f'p{q}']:+.0f} %" for q in (10, 50, 90))
                  + " |" for c, k, p in kinds]
    lines += ["", "Every run (real and simulated values, load average at its start, the host/device contention "
              "its calibration measured):", "",
              "| repeat | configuration | rate | load | contention | " + " | ".join(
                  f"{g.split('_')[0].upper()} {s} real / sim" for g, s in METRICS) + " |",
              "|---|---|---|---|---|" + "---|" * len(METRICS)]
    for r in result["runs"]:
        cells = [f"{1e3 * r[f'{g}.{s}']['real']:.1f} / {1e3 * r[f'{g}.{s}']['sim']:.1f} ms" for g, s in METRICS]
        contention = f"{r['contention']:.2f}" if r.get("contention") is not None else "-"
        lines.append(f"| {r['repeat']} | {r['config']} | {r['rate']:g} | {r['load_average']:.1f} | {contention} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
