"""The host/device contention of a CPU, measured: how much of the host's time the device loses.

On a CPU the "device" is XLA's threads on the cores the engine's Python also runs on, so host
work (scheduling, row building, launches, read-backs) delays the device by some share of its
length: `HostParams.contention`, device seconds lost per host second while both are busy. The
share is no constant: where XLA's threads and the Python thread each find a free core little is
lost; where other work holds the cores every thread competes and a host second can cost the
device a second or more. Hence measured, at calibration time, beside the grid.

In the simulator (lp_jax.sim.executor) a device-bound iteration of a pipelined run lasts, from
the host having the previous one's tokens to having its own,

    period = device + contention x (host + readback)

(the read-back of the previous iteration and the dispatch of the next both fall while it runs),
where device is the cost model's time, fitted to calls launched back to back. Calibration times
the same decode plan both ways, block by block (lp_jax.bench.calibrate.Calibrator.contention):
back to back (device) and pipelined as the engine serves, each iteration's rows built and
launched before the one in flight is read back (period, host, readback); each pair of blocks
solves for one contention, and the median of them is the table's. Because the back-to-back time
already holds the launches' share, what is measured is the contention per second of the host
model's work (which counts the launches too), not of the work besides them.
"""

from __future__ import annotations

import numpy as np

CONTENTION_MAX = 2.0  # a loaded machine: a host second can cost the device more than a second
MIN_SAMPLES = 5  # fewer samples than this: keep the default


def implied_contention(period_s, device_s, host_s, readback_s) -> np.ndarray:
    """Per sample (arrays of seconds per iteration, as in the module docstring): the contention that
    makes the simulator's period equal the measured one, (period - device) / (host + read-back)."""
    period_s, device_s = np.asarray(period_s, float), np.asarray(device_s, float)
    busy_s = np.asarray(host_s, float) + np.asarray(readback_s, float)
    if np.any(busy_s <= 0):
        raise ValueError("host + read-back seconds must be positive")
    return (period_s - device_s) / busy_s


def fit_contention(period_s, device_s, host_s, readback_s, default: float = 1.0) -> dict:
    """{"contention": the median implied contention clipped to [0, CONTENTION_MAX], "samples": how
    many, "p10", "p50", "p90": of the unclipped values}; the default (and samples) when fewer than
    MIN_SAMPLES are given."""
    c = implied_contention(period_s, device_s, host_s, readback_s)
    if c.size < MIN_SAMPLES:
        return dict(contention=float(default), samples=int(c.size))
    p10, p50, p90 = np.percentile(c, [10, 50, 90])
    return dict(contention=float(np.clip(p50, 0.0, CONTENTION_MAX)), samples=int(c.size), p10=float(p10),
                p50=float(p50), p90=float(p90))

