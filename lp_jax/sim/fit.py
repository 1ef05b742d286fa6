"""Fitting a cost table's constants to timed samples, and the fit's error.

Samples (dicts, as a table stores them):

- {"kind": "step", "layers": {type: count}, "work": {type: LayerWork fields}, "seconds": s}:
  one executable call over `count` layers of each type doing that work per layer;
- {"kind": "head", "rows": B, "head_bytes": b, "head_flops_per_row": f, "seconds": s}: a sampling call;
- {"kind": "host", "decodes": n, "prefills": m, "calls": c, "seconds": s}: the engine's host time
  of one iteration, its waits for the device left out;
- {"kind": "iteration", "calls": [step samples], "head": head sample or None, "seconds": s}: a
  whole iteration's device time (its calls back to back, then its sampling call); with
  "launch_bound": true (lp-jax calibrate's, iterations launched back to back) on a GPU, the
  longer of that and the host's launches of its calls.

The device constants are fitted by robust least squares on log(predicted / measured) (relative
errors: a call of 50 us counts as much as one of 50 ms), efficiencies bounded and
every constant positive (efficiencies up to EFF_MAX); a weak prior (weight PRIOR) holds constants that no sample constrains
(the side of a roofline max() that never binds) at their starting values instead of letting them
wander. The host constants are a robust non-negative linear least-squares fit.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize

from lp_jax.sim.cost_model import CostTable, DeviceParams, HostParams, LayerWork

STEP_PARAMS = ("call_s", "layer_s", "row_s", "dense_bw", "dense_flop", "attn_bw", "attn_flop", "expert_bw",
               "expert_flop", "overlap", "cache_bytes", "cache_speedup", "range_row_s", "attn_par", "expert_par")
# Occupancy constants (parallel units a kernel needs to fill the device) and the LayerWork field
# that gives a call's units: fitted only where the samples carry units.
PAR_UNITS = {"attn_par": "attn_units", "expert_par": "expert_units"}
PAR_MAX = 4096.0
# The host's seconds per call when a grid point is launched back to back (lp-jax calibrate's
# loop: the launches alone, no scheduling or row building): fitted where samples are launch-bound.
GRID_LAUNCH = "grid_launch_s"
HEAD_PARAMS = ("head_s", "head_row_s")
CACHE_PARAMS = ("cache_bytes", "cache_speedup")
EFFICIENCIES = {"dense_bw", "dense_flop", "attn_bw", "attn_flop", "expert_bw", "expert_flop"}
PRIOR = 0.02
# Efficiencies are relative to the measured copy bandwidth (read + write) and matmul rate; a
# read-only stream can beat a copy (H100: 2.36 TB/s copy, 3.35 TB/s HBM3 datasheet; H200: 1.95
# TB/s copy, 4.8 TB/s HBM3e datasheet, 2.5x), hence > 1. (1.5 until grid v2: four of the first H200
# table's efficiencies sat at it.)
EFF_MAX = 3.0
OVERLAP_MAX = 16.0  # roof's p: 1 (no overlap) .. 16 (max(memory, compute) within 4 %)
CACHE_SPEEDUP_MAX = 20.0
# Starting points of the device fit, relative to the shortest sample (fixed times) or absolute;
# the best fit of them is kept.
STARTS = ({"fixed": 0.5, "eff": 0.5, "overlap": 4.0, "cache_bytes": 1e6},
          {"fixed": 0.2, "eff": 0.1, "overlap": 2.0, "cache_bytes": 1e7},
          {"fixed": 0.05, "eff": 0.02, "overlap": 8.0, "cache_bytes": 1e5})


def _start(name: str, start: dict, shortest_s: float) -> float:
    if name in EFFICIENCIES:
        return start["eff"]
    if name in ("overlap", "cache_bytes"):
        return start[name]
    if name in PAR_UNITS:
        return {"attn_par": 64.0, "expert_par": 32.0}[name]
    if name == "cache_speedup":
        return 4.0
    per = {"call_s": 1.0, "layer_s": 0.1, "head_s": 0.1, "row_s": 1e-3, "head_row_s": 1e-3, "range_row_s": 1e-3}[name]
    return start["fixed"] * shortest_s * per


def predict(table: CostTable, sample: dict) -> float:
    """The table's seconds for one sample."""
    if sample["kind"] == "step":
        works = {t: LayerWork(**w) for t, w in sample["work"].items()}
        layers = sum(n * table.layer_s(works[t]) for t, n in sample["layers"].items() if n)
        return table.call_s(layers, next(iter(works.values())).rows, sample.get("range", False))
    if sample["kind"] == "head":
        return table.head_s(sample["rows"], sample["head_bytes"], sample["head_flops_per_row"])
    if sample["kind"] == "iteration":
        device = sum(predict(table, c) for c in sample["calls"]) + (predict(table, sample["head"]) if sample["head"] else 0.0)
        if sample.get("launch_bound") and table.backend == "pallas":
            # Launched back to back (lp-jax calibrate), an iteration takes the longer of its device
            # time and the host's launches (a GPU runs apart from the host; the first H200 grid's
            # 1-layer calls of 8 rows took the host's ~1.6 ms launch, not their device time).
            launch = table.device_params.grid_launch_s or table.host.launch_s
            return max(device, (len(sample["calls"]) + bool(sample["head"])) * launch)
        return device
    if sample["kind"] == "host":
        h = table.host
        return h.step_s + h.decode_s * sample["decodes"] + h.prefill_s * sample["prefills"] + h.launch_s * sample["calls"]
    raise ValueError(f"unknown sample kind {sample['kind']!r}")


def errors(table: CostTable, samples: list[dict]) -> np.ndarray:
    """Relative errors predicted / measured - 1 of the samples."""
    return np.array([predict(table, s) / s["seconds"] - 1.0 for s in samples])


def error_summary(table: CostTable, samples: list[dict]) -> dict:
    """{kind: {samples, median/p90/max |relative error|}} over the samples of each kind."""
    out = {}
    for kind in sorted({s["kind"] for s in samples}):
        e = np.abs(errors(table, [s for s in samples if s["kind"] == kind]))
        out[kind] = dict(samples=int(e.size), median_abs_rel_err=float(np.median(e)),
                         p90_abs_rel_err=float(np.percentile(e, 90)), max_abs_rel_err=float(e.max()))
    return out


def fit_device(table: CostTable, samples: list[dict], names: tuple[str, ...], starts: list[dict] = STARTS) -> DeviceParams:
    """Device constants `names` fitted to `samples` (the others kept from the table)."""
    if not samples:
        return table.device_params
    measured = np.log([s["seconds"] for s in samples])
    upper = np.array([np.log(EFF_MAX) if n in EFFICIENCIES else np.log(OVERLAP_MAX) if n == "overlap"
                      else np.log(CACHE_SPEEDUP_MAX) if n == "cache_speedup" else np.log(PAR_MAX) if n in PAR_UNITS
                      else np.inf for n in names])
    lower = np.array([0.0 if n in ("overlap", "cache_speedup") or n in PAR_UNITS else -60.0 for n in names])

    def params_of(x) -> DeviceParams:
        return dataclasses.replace(table.device_params, **dict(zip(names, np.exp(x).tolist())))

    def residuals(x, x0):
        t = table.with_params(device_params=params_of(x))
        pred = np.log([max(predict(t, s), 1e-15) for s in samples])
        return np.concatenate([pred - measured, PRIOR * (x - x0)])

    best = None
    for start in starts:
        # The launch bound starts at the host's fitted launch (below it, no sample feels it).
        x0 = np.log([table.host.launch_s or 1e-3 if n == GRID_LAUNCH else _start(n, start, float(np.exp(measured.min())))
                     for n in names])
        fit = optimize.least_squares(residuals, x0, args=(x0,), bounds=(lower, upper),
                                     loss="soft_l1", f_scale=0.05, x_scale=1.0, max_nfev=4000)
        if best is None or fit.cost < best.cost:
            best = fit
    return params_of(best.x)


def fit_roofline(bytes_: np.ndarray, flops: np.ndarray, seconds: np.ndarray, peaks,
                 overlap: float | None = None) -> tuple[float, float, float, float]:
    """(fixed seconds, bandwidth efficiency, FLOP efficiency, overlap p) of t = fixed + roof(bytes /
    (BW e_bw), flops / (R e_flop)) fitted to timed kernels of one kind (relative errors, as
    `fit_table`); `overlap` given: p held at it."""
    def pred(x):
        fixed, e_bw, e_flop = np.exp(x[:3])
        p = overlap if overlap is not None else np.exp(x[3])
        m, c = bytes_ / (peaks.copy_Bps * e_bw), flops / (peaks.matmul_flops * e_flop)
        return fixed + (m ** p + c ** p) ** (1.0 / p)

    x0 = np.log([0.5 * seconds.min(), 0.5, 0.5, 4.0])[:3 if overlap is not None else 4]
    lower, upper = [-60.0, -60.0, -60.0, 0.0], [np.inf, np.log(EFF_MAX), np.log(EFF_MAX), np.log(OVERLAP_MAX)]
    fit = optimize.least_squares(lambda x: np.concatenate([np.log(pred(x) / seconds), PRIOR * (x - x0)]), x0,
                                 bounds=(lower[:len(x0)], upper[:len(x0)]), loss="soft_l1", f_scale=0.05)
    fixed, e_bw, e_flop = np.exp(fit.x[:3])
    return float(fixed), float(e_bw), float(e_flop), float(overlap if overlap is not None else np.exp(fit.x[3]))


def fit_host(samples: list[dict]) -> HostParams:
    """Robust (soft-L1) non-negative least squares of the host's seconds per iteration on
    (1, decodes, prefills, calls): a step the machine's other work interrupts does not pull the
    constants. Read-back is measured separately and not fitted here."""
    rows = [s for s in samples if s["kind"] == "host"]
    A = np.array([[1.0, s["decodes"], s["prefills"], s["calls"]] for s in rows])
    y = np.array([s["seconds"] for s in rows])
    x0, _ = optimize.nnls(A, y)
    scale = float(np.median(y))
    fit = optimize.least_squares(lambda x: (A @ x - y) / scale, x0, bounds=(0.0, np.inf), loss="soft_l1", f_scale=0.2)
    coef = fit.x
    return HostParams(step_s=float(coef[0]), decode_s=float(coef[1]), prefill_s=float(coef[2]),
                      launch_s=float(coef[3]))


def fit_table(table: CostTable, samples: list[dict], readback_s: float | None = None) -> CostTable:
    """`table` with its constants fitted to `samples` (step, head and host samples; a kind with no
    samples keeps the table's constants), the samples and the fit's error recorded in it."""
    t = table
    if any(s["kind"] == "host" for s in samples):
        # The host first: a GPU iteration's time is bounded below by its launches (see predict).
        host = fit_host(samples)
        host.readback_s = table.host.readback_s if readback_s is None else readback_s
        host.contention = table.host.contention
        t = t.with_params(host=host)
    device = [s for s in samples if s["kind"] in ("step", "head", "iteration")]
    names = tuple(n for n in STEP_PARAMS + HEAD_PARAMS if n not in PAR_UNITS or _has_units(device, PAR_UNITS[n]))
    if t.backend == "pallas" and any(s.get("launch_bound") for s in device):
        names += (GRID_LAUNCH,)
    t = t.with_params(device_params=fit_device(t, device, names))
    return t.with_params(samples=list(samples), fit=dict(t.fit, **error_summary(t, samples)))


def _has_units(samples: list[dict], field: str) -> bool:
    """Whether any step (of an iteration) among the samples gives its parallel units `field`."""
    steps = [c for s in samples for c in (s["calls"] if s["kind"] == "iteration" else [s] if s["kind"] == "step" else [])]
    return any(w.get(field, 0) > 0 for c in steps for w in c["work"].values())
