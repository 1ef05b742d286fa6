"""executor.layer_loop: every layer of [lo, hi) once, in order, for static and traced bounds."""

import jax
import jax.numpy as jnp
import numpy as np

from lp_jax.executor import layer_loop

L = 11  # not a multiple of the block: remainders of every size occur


def _trace(lo, hi, block):
    """The layers visited, in order, as a [L] array: visit number (1-based) per layer, 0 if unvisited."""
    def body(layer, carry):
        order, n = carry
        return order.at[layer].set(n + 1), n + 1
    return layer_loop(lo, hi, body, (jnp.zeros((L,), jnp.int32), jnp.int32(0)), block)[0]


def test_traced_bounds_visit_each_layer_of_the_range_once_in_order():
    for block in (1, 3, 4):
        run = jax.jit(lambda lo, hi, block=block: _trace(lo, hi, block))
        for lo in range(L + 1):
            for hi in range(lo, L + 1):
                want = np.zeros(L, np.int32)
                want[lo:hi] = np.arange(1, hi - lo + 1)
                np.testing.assert_array_equal(run(np.int32(lo), np.int32(hi)), want, err_msg=f"{lo=} {hi=} {block=}")


def test_static_bounds_are_one_loop_with_a_known_trip_count():
    jaxpr = jax.make_jaxpr(lambda: _trace(2, 9, 4))()
    loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("scan", "while")]
    assert [e.primitive.name for e in loops] == ["scan"]  # fori_loop with int bounds lowers to a scan
    np.testing.assert_array_equal(_trace(2, 9, 4), [0, 0, 1, 2, 3, 4, 5, 6, 7, 0, 0])
