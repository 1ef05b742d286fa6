"""Every step of the executor loops over layers with a static trip count (a scan, which XLA runs
on the GPU without a host round trip per layer): the whole-model step, and for layered the range
steps of 1, 2, 4, ... layers from a traced first layer, which `layer_pieces` combines."""

import jax
import pytest

from lp_jax.engine.config import EngineConfig
from lp_jax.engine.executor import ModelExecutor, layer_pieces, range_lengths
from lp_jax.engine.kv_cache import BlockManager
from tests.engine_helpers import preset_model


def _loops(fn, ex, *first):
    shape = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
    jaxpr = jax.make_jaxpr(fn)(*jax.tree.map(shape, ex.step_state()), ex._batch_struct(8), *first)
    inner = jaxpr.jaxpr.eqns[0].params["jaxpr"].jaxpr  # the jit's body
    return [e.primitive.name for e in inner.eqns if e.primitive.name in ("scan", "while")]


@pytest.mark.parametrize("schedule", ["layered", "chunked"])
def test_every_step_has_a_static_layer_loop(schedule):
    cfg, params = preset_model("tiny-qwen3-moe", 0)
    config = EngineConfig(schedule=schedule, max_num_seqs=4, max_prefill_tokens=64, max_cohort_tokens=64, num_pages=8)
    ex = ModelExecutor(cfg, config, params, BlockManager(8, config.page_size), "float32")
    L = cfg.num_layers
    expected = [L, 1, 2] if schedule == "layered" else [L]
    assert list(ex._step_fns) == expected
    scalar = jax.ShapeDtypeStruct((), "int32")
    for n, fn in ex._step_fns.items():
        assert _loops(fn, ex, *ex.first_layer_args(n, scalar)) == ["scan"]
    assert ex.num_executables == len(expected) * len(ex.buckets) + 2 * len(ex.seq_buckets)


def test_layer_pieces_cover_the_range_in_power_of_two_steps():
    assert layer_pieces(0, 48, 48) == [(0, 48)]
    assert layer_pieces(0, 24, 48) == [(0, 16), (16, 8)]
    assert layer_pieces(27, 48, 48) == [(27, 16), (43, 4), (47, 1)]
    assert range_lengths(48) == [1, 2, 4, 8, 16, 32] and range_lengths(24) == [1, 2, 4, 8, 16]
    assert range_lengths(1) == []
    for L in (1, 2, 5, 24, 48):
        for lo in range(L):
            for hi in range(lo + 1, L + 1):
                pieces = layer_pieces(lo, hi, L)
                assert pieces[0][0] == lo and sum(n for _, n in pieces) == hi - lo
                assert all(a + n == b for (a, n), (b, _) in zip(pieces, pieces[1:]))
                assert all(n in range_lengths(L) for _, n in pieces) or pieces == [(0, L)]
    with pytest.raises(ValueError, match="layer range"):
        layer_pieces(3, 3, 8)
