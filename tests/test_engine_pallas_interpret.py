"""The executor's steps with the Pallas attention kernel (GPU interpret mode on the CPU) against
the same steps on the reference, in bf16: the plumbing the GPU runs (the attention plan made once
per call for the model's windows and picked per layer, whole-model and range steps). A dense tiny
model with head dim 64 (so the kernel tiles it), a sliding window on alternate layers and sinks;
dense, so that no expert routing flips on a rounding difference."""

import dataclasses

import jax.numpy as jnp
import numpy as np

from lp_jax.engine.config import EngineConfig
from lp_jax.engine.executor import ModelExecutor
from lp_jax.engine.kv_cache import BlockManager
from lp_jax.engine.request import Request, SamplingParams, Status
from lp_jax.engine.scheduler import IterationPlan, PrefillWork
from lp_jax.model import init_params
from lp_jax.model.config import get_preset
from pallas_kernels.interpret import gpu_interpret_mode

CFG = dataclasses.replace(get_preset("tiny-qwen3"), name="tiny-dense-windowed-hd64", head_dim=64, num_heads=8,
                          num_kv_heads=1, attention_sinks=True, sliding_window=16,
                          layer_types=("sliding", "full", "sliding", "full"))
ENGINE = EngineConfig(schedule="layered", max_num_seqs=4, max_prefill_tokens=64, max_cohort_tokens=64,
                      max_model_len=128, num_pages=24, row_buckets=(72,))


def _run(backend: str) -> list[np.ndarray]:
    """Hidden buffer and K pool (f32) after a layered mixed iteration (decode rows through every
    layer, a 40-token prefill through layers [1, 3): range steps) and a decode iteration (the
    whole-model step)."""
    blocks = BlockManager(ENGINE.num_pages, ENGINE.page_size)
    rng = np.random.default_rng(0)
    prefill = Request(0, rng.integers(0, CFG.vocab_size, 40).tolist(), SamplingParams(max_tokens=4), 0.0, 1)
    decode = Request(1, rng.integers(0, CFG.vocab_size, 31).tolist(), SamplingParams(max_tokens=4), 0.0, 2,
                     status=Status.DECODING, num_computed=30)
    blocks.allocate(0, 40)
    blocks.allocate(1, 33)
    with gpu_interpret_mode():
        ex = ModelExecutor(CFG, ENGINE, init_params(CFG, seed=3), blocks, "bfloat16", backend)
        ex.precompile()
        L = CFG.num_layers
        ex.execute(IterationPlan(L, decodes=[decode], prefills=[PrefillWork(prefill, 0, 40, 0)],
                                 prefill_layers=(1, 3)))
        decode.num_computed += 1
        decode.output.append(5)
        ex.execute(IterationPlan(L, decodes=[decode]))
    return [np.asarray(ex.hidden_RD, np.float32), np.asarray(ex.k_pool, np.float32)]


def test_pallas_steps_match_the_reference_steps():
    for got, want in zip(_run("pallas"), _run("reference")):
        assert np.all(np.isfinite(got))
        assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-2
