"""The device's ceilings, measured in the run whose floors use them: copy bandwidth (read + write of
an elementwise op) and bf16 matmul rate, each the best of `reps` timed calls after warm-up (a floor
must not be lenient; the median of 10 varied from 2.08 to 2.49 TB/s between runs on one H100)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def time_s(fn, reps: int) -> float:
    """Fastest seconds of fn() (which returns something to block on) over `reps` calls, after
    three warm-up calls."""
    for _ in range(3):
        jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def ceilings(mib: int, s: int, reps: int = 20) -> dict:
    """Copy bandwidth (B/s, read + write of `mib` MiB of bf16) and bf16 matmul rate (FLOP/s, s x s x s)."""
    n = mib * 2**20 // 2
    x = jax.random.normal(jax.random.key(0), (n,), jnp.bfloat16)
    add = jax.jit(lambda a: a + jnp.bfloat16(1))
    copy = 2 * x.nbytes / time_s(lambda: add(x), reps)
    del x
    a, b = (jax.random.normal(jax.random.key(i), (s, s), jnp.bfloat16) for i in (1, 2))
    dot = jax.jit(jnp.dot)
    rate = 2 * s**3 / time_s(lambda: dot(a, b), reps)
    return dict(copy_Bps=copy, matmul_flops=rate)
