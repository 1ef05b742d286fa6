"""compile_all: each executable once per process, side by side on threads, progress per job."""

import jax
import jax.numpy as jnp
import numpy as np

from lp_jax.engine import compile_counter
from lp_jax.engine.compile_cache import CompileJob, compile_all


def _jobs(fn, sizes, kind):
    return [CompileJob(kind, fn, (jax.ShapeDtypeStruct((n,), jnp.float32),)) for n in sizes]


def test_compiles_each_job_once_on_threads_and_reports_every_job():
    fn = jax.jit(lambda x: jnp.cumsum(x * 3.0))
    kind = ("test_compile_all", id(fn))
    ticks = []
    before = compile_counter.count()
    exes = compile_all(_jobs(fn, (5, 6, 7), kind), threads=3, done=lambda: ticks.append(1))
    assert compile_counter.count() - before == 3 and len(ticks) == 3
    for n, exe in zip((5, 6, 7), exes):
        x = np.arange(n, dtype=np.float32)
        np.testing.assert_allclose(exe(x), np.cumsum(3 * x))
    # Cached: the same jobs again (and a repeated one) compile nothing, and still tick per job.
    again = compile_all(_jobs(fn, (7, 5, 5), kind), threads=2, done=lambda: ticks.append(1))
    assert compile_counter.count() - before == 3 and len(ticks) == 6
    assert again[0] is exes[2] and again[1] is again[2] is exes[0]
