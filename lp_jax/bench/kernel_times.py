"""GPU time of every kernel launched while a block of host code runs (CUPTI, NVIDIA only).

    with KernelTimes() as kt:
        run_some_iterations()
    kt.busy_ms            # sum of kernel durations (device busy time, ms)
    kt.by_name(top=10)    # [(kernel name, launches, total ms)], largest first
    kt.dropped            # records with a duration outside [0, wall of the block]: > 0 = not trustworthy

Wall time of the block minus `busy_ms` is what the device spent idle: host work that did not
overlap device work, launch gaps and syncs. Uses the CUPTI hooks that ship with jax's Mosaic GPU
runtime (`jax.experimental.mosaic.gpu.profiler` uses the same); kernels of concurrent streams are
summed, so busy time can exceed wall time only if kernels overlap.
"""

from __future__ import annotations

import time
from collections import defaultdict


class KernelTimes:
    def __init__(self):
        self.kernels: list[tuple[str, float]] = []
        self.dropped = 0  # records with impossible durations, left out of `kernels`

    @staticmethod
    def available() -> bool:
        try:
            from jax._src.lib import mosaic_gpu as lib  # noqa: F401
            import jax
            return jax.devices()[0].platform == "gpu"
        except Exception:  # noqa: BLE001 - any import or backend failure means "not here"
            return False

    def __enter__(self):
        if not self.available():
            raise RuntimeError("kernel timing needs an NVIDIA GPU and jax's Mosaic GPU runtime")
        from jax._src.lib import mosaic_gpu as lib
        self._ext = lib._mosaic_gpu_ext
        self._ext._cupti_init()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall_ms = (time.perf_counter() - self._start) * 1e3
        records = list(self._ext._cupti_get_timings(True) or [])
        # A duration outside [0, wall] is a broken record (seen for kernels that XLA launches
        # from CUDA graphs); such a block's busy time is not trustworthy.
        self.kernels = [(n, t) for n, t in records if 0 <= t <= wall_ms]
        self.dropped = len(records) - len(self.kernels)
        return False

    @property
    def busy_ms(self) -> float:
        return float(sum(t for _, t in self.kernels))

    def by_name(self, top: int | None = None) -> list[tuple[str, int, float]]:
        agg: dict[str, list] = defaultdict(lambda: [0, 0.0])
        for name, t in self.kernels:
            agg[name][0] += 1
            agg[name][1] += t
        rows = sorted(((n, c, ms) for n, (c, ms) in agg.items()), key=lambda r: -r[2])
        return rows[:top] if top else rows
