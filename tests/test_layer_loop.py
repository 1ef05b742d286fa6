"""The executor's whole-model step loops over layers with a static trip count (a scan, which XLA
runs as one CUDA graph on the GPU); range steps loop over traced bounds (a while)."""

import jax

from lp_jax.engine_config import EngineConfig
from lp_jax.executor import ModelExecutor
from lp_jax.kv_cache import BlockManager
from tests.engine_helpers import preset_model


def _loops(fn, ex, *bounds):
    shape = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
    jaxpr = jax.make_jaxpr(fn)(*jax.tree.map(shape, ex.step_state()), ex._batch_struct(8), *bounds)
    inner = jaxpr.jaxpr.eqns[0].params["jaxpr"].jaxpr  # the jit's body
    return [e.primitive.name for e in inner.eqns if e.primitive.name in ("scan", "while")]


def test_whole_model_step_has_a_static_layer_loop_and_range_step_a_traced_one():
    cfg, params = preset_model("tiny-qwen3-moe", 0)
    config = EngineConfig(schedule="layered", max_num_seqs=4, max_num_batched_tokens=64, num_pages=8)
    ex = ModelExecutor(cfg, config, params, BlockManager(8, config.page_size), "float32")
    scalar = jax.ShapeDtypeStruct((), "int32")
    assert _loops(ex._whole_fn, ex) == ["scan"]
    assert _loops(ex._range_fn, ex, scalar, scalar) == ["while"]
    assert ex.uses_ranges and ex.num_executables == 2 * len(ex.buckets) + 2 * len(ex.seq_buckets)
