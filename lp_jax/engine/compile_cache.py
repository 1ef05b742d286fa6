"""The compile cache: every executable the engine builds, compiled once per process and shared by
all engines of it (the one mutable module-level cache the house rules allow).

Executables are keyed by everything that determines them: the function's kind (with the model and
backend), the XLA options and the abstract shapes of every argument. `compile_counter` counts what
is compiled; serving must not move it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import jax

# CompileJob.key -> executable.
_EXECUTABLES: dict[tuple, object] = {}
# XLA compiles without the GIL, so independent executables compile side by side (a full-size
# layer step takes ~4.5 s on the GPU machine's host, and layered needs dozens of them).
COMPILE_THREADS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class CompileJob:
    """One executable to build: `jitted` for these abstract arguments and XLA options
    ((name, value) pairs); `kind` names the function (with the model and backend)."""

    kind: tuple
    jitted: object
    abstract_args: tuple
    options: tuple = ()

    @property
    def key(self) -> tuple:
        leaves, tree = jax.tree.flatten(self.abstract_args)
        return self.kind + self.options + (tree, tuple((leaf.shape, str(leaf.dtype)) if hasattr(leaf, "shape")
                                                       else leaf for leaf in leaves))


def compile_all(jobs: list[CompileJob], threads: int = 1, done=lambda: None) -> list:
    """The jobs' executables, each compiled once per process; those not cached yet compile on
    `threads` threads while the next ones are traced here. `done()` is called once per job."""
    keys = [job.key for job in jobs]
    with ThreadPoolExecutor(threads) as pool:
        pending = {}
        for job, key in zip(jobs, keys):
            if key in _EXECUTABLES or key in pending.values():
                done()
                continue
            lowered = job.jitted.lower(*job.abstract_args)
            pending[pool.submit(lowered.compile, compiler_options=dict(job.options) or None)] = key
        for future in as_completed(pending):
            _EXECUTABLES[pending[future]] = future.result()
            done()
    return [_EXECUTABLES[key] for key in keys]
