"""The host/device contention of a CPU, measured on a real serving run's iterations.

On a CPU the "device" is XLA's threads on the cores the engine's Python also runs on, so host
work (scheduling, row building, launches, read-backs) delays the device by some share of its
length: `HostParams.contention`, device seconds lost per host second while both are busy. The
share is not 1: on a quiet 2-core machine XLA's threads and the Python thread mostly run side by
side (one core each), so little is lost; under load every thread competes for the same cores and
a host second can cost the device a second or more. Hence measured, at calibration time.

In the simulator (lp_jax.sim.executor) a device-bound iteration k of a pipelined run lasts, from
the host having k - 1's tokens to having k's,

    period_k = device_k + contention x (host_{k+1} + readback_k)

(the read-back of k - 1 and the dispatch of k + 1 both fall while k runs). A real run gives
period_k, host_{k+1} (the step's wall time minus its time in fetch) and readback_k; the cost model
gives device_k for k's plan; each device-bound iteration solves for one contention, and the
median of them is the table's (robust to the iterations the machine's other work interrupted).
"""

from __future__ import annotations

import numpy as np

CONTENTION_MAX = 2.0  # a loaded machine: a host second can cost the device more than a second
MIN_ITERATIONS = 5  # fewer device-bound iterations than this: keep the default


def implied_contention(period_s, device_s, host_s, readback_s) -> np.ndarray:
    """Per iteration (arrays of seconds, as in the module docstring): the contention that makes the
    simulator's period equal the measured one, (period - device) / (host + read-back)."""
    period_s, device_s = np.asarray(period_s, float), np.asarray(device_s, float)
    busy_s = np.asarray(host_s, float) + np.asarray(readback_s, float)
    if np.any(busy_s <= 0):
        raise ValueError("host + read-back seconds must be positive")
    return (period_s - device_s) / busy_s


def fit_contention(period_s, device_s, host_s, readback_s, default: float = 1.0) -> dict:
    """{"contention": the median implied contention clipped to [0, CONTENTION_MAX], "iterations":
    how many, "p10", "p50", "p90": of the unclipped values}; the default (and iterations) when fewer
    than MIN_ITERATIONS iterations are given."""
    c = implied_contention(period_s, device_s, host_s, readback_s)
    if c.size < MIN_ITERATIONS:
        return dict(contention=float(default), iterations=int(c.size))
    p10, p50, p90 = np.percentile(c, [10, 50, 90])
    return dict(contention=float(np.clip(p50, 0.0, CONTENTION_MAX)), iterations=int(c.size), p10=float(p10),
                p50=float(p50), p90=float(p90))


def serving_iterations(steps: list[dict], predict_s, readback_s: float, min_wait_s: float = 1e-4):
    """(period, device, host, read-back) seconds of each device-bound iteration of a real run, as
    arrays for fit_contention. steps: one per engine step that dispatched, in order, each {"iteration":
    the one it dispatched, "fetched": the one it read back (None: none), "plan", "contexts" (its
    decodes' keys), "host_s", "wait_s": its wait for the device in fetch, "got_s": when the
    read-back iteration reached the host}. predict_s(plan, contexts): the cost model's device
    seconds. An iteration counts when the step after the one that dispatched it read it back after
    waiting at least min_wait_s (device-bound) and the step that dispatched it read one back too."""
    rows = []
    for mine, nxt in zip(steps, steps[1:]):
        if nxt["fetched"] != mine["iteration"] or mine["got_s"] is None or nxt["wait_s"] < min_wait_s:
            continue
        rows.append((nxt["got_s"] - mine["got_s"], predict_s(mine["plan"], mine["contexts"]), nxt["host_s"],
                     readback_s))
    return tuple(np.array(col, float) for col in zip(*rows)) if rows else (np.array([]),) * 4
