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


def test_executables_are_keyed_by_the_kernels_that_serve_not_the_raw_backend(monkeypatch):
    """backend=None and "reference" build the same executables on a CPU (one key), while
    LP_JAX_KERNELS=pallas makes None mean the Pallas kernels (another key), and the opt-in
    decode-size MoE path (LP_JAX_MOE_DECODE_MAX_TOKENS) another still."""
    from lp_jax.engine.config import EngineConfig
    from lp_jax.engine.executor import ModelExecutor
    from lp_jax.engine.kv_cache import BlockManager
    from tests.engine_helpers import preset_model

    cfg, params = preset_model("tiny-qwen3-moe", seed=5)
    config = EngineConfig(max_num_seqs=2, max_prefill_tokens=16, max_cohort_tokens=16, max_model_len=64,
                          row_buckets=(18,))

    def kind(backend):
        return ModelExecutor(cfg, config, params, BlockManager(8, 16), "float32", backend)._kind

    monkeypatch.delenv("LP_JAX_KERNELS", raising=False)
    monkeypatch.delenv("LP_JAX_MOE_DECODE_MAX_TOKENS", raising=False)
    # (model, kernels, routing profile, tp x ep)
    assert kind(None) == kind("reference") and kind(None)[:2] == (cfg, ("reference", "reference"))
    assert kind(None)[3] == (1, 1)
    monkeypatch.setenv("LP_JAX_KERNELS", "pallas")
    # float32 pools: the attention kernel tiles bf16/f16 only, so automatic choice keeps the reference there.
    assert kind(None)[:2] == (cfg, ("pallas", "reference")) and kind(None) != kind("reference")
    # The opt-in decode-size MoE path builds other layer steps: its limit is part of the key.
    monkeypatch.setenv("LP_JAX_MOE_DECODE_MAX_TOKENS", "64")
    assert kind(None)[:2] == (cfg, ("pallas, decode <= 64 tokens", "reference"))
