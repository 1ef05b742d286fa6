"""The blocked expert path (pallas_kernels/moe_blocked.py) against the ragged_dot reference: values
and gradients on random routings, skewed ones (every row to one expert, experts left empty),
padding rows, biases with GPT-OSS's activation, layer-stacked weights and odd block sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.moe_blocked import block_layout, moe_experts_blocked
from pallas_kernels.moe_reference import moe_experts_reference, random_experts


def problem(T=37, D=16, E=6, F=8, K=2, bias=False, seed=0, ids=None):
    key = jax.random.PRNGKey(seed)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x = jax.random.normal(k1, (T, D), jnp.float32)
    if ids is None:
        ids = jnp.argsort(jax.random.uniform(k2, (T, E)), axis=1)[:, :K].astype(jnp.int32)
    weights = jax.nn.softmax(jax.random.normal(k3, (T, K)), axis=-1)
    return x, weights, ids, random_experts(k4, E, D, F, bias, dtype=jnp.float32)


STATIC = ("activation", "alpha", "limit", "block_m")
# Jitted: one compile per function and shape instead of compiling and dispatching each op eagerly.
reference = jax.jit(moe_experts_reference, static_argnames=STATIC[:3])
blocked = jax.jit(moe_experts_blocked, static_argnames=STATIC)


def both(x, weights, ids, experts, **kw):
    return (reference(x, weights, ids, experts, **{k: v for k, v in kw.items() if k != "block_m"}),
            blocked(x, weights, ids, experts, **kw))


@pytest.mark.parametrize("block_m", [1, 4, 32, 128])
def test_values_match_reference(block_m):
    ref, got = both(*problem(), block_m=block_m)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_skewed_routing_and_padding_rows():
    T, E = 21, 5
    ids = jnp.stack([jnp.zeros(T, jnp.int32), jnp.full(T, 3, jnp.int32)], axis=1)  # experts 1, 2, 4 empty
    x, weights, ids, experts = problem(T=T, E=E, ids=ids)
    valid = jnp.arange(T) % 4 != 1
    ref, got = both(x, weights, ids, experts, valid_T=valid, block_m=8)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(got)[~np.asarray(valid)] == 0)


def test_biases_clamped_swiglu_and_layer_stacks():
    x, weights, ids, experts = problem(bias=True, seed=3)
    stacked = {name: jnp.stack([w * 0.5, w]) for name, w in experts.items()}
    kw = dict(activation="clamped_swiglu", alpha=1.702, limit=7.0, layer=jnp.int32(1))
    ref, got = both(x, weights, ids, stacked, block_m=16, **kw)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_gradients_match_reference():
    x, weights, ids, experts = problem(seed=5)

    def loss(fn, x, weights, experts):
        return jnp.sum(jnp.sin(fn(x, weights, ids, experts)))

    def grads(fn):
        return jax.jit(jax.grad(functools.partial(loss, fn), argnums=(0, 1, 2)))(x, weights, experts)

    g_ref = grads(moe_experts_reference)
    g_got = grads(functools.partial(moe_experts_blocked, block_m=8))
    for ref, got in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_got)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_layout_gives_each_block_one_expert():
    ids = jnp.array([[2, 0], [2, 1], [2, 0], [0, 1]], jnp.int32)
    order, row_of, block_expert = block_layout(ids, num_experts=4, block_m=2)
    experts_sorted = np.asarray(ids).reshape(-1)[np.asarray(order)]
    rows = np.asarray(row_of)
    assert len(set(rows.tolist())) == len(rows)  # no two assignments share a row
    assert np.all(np.asarray(block_expert)[rows // 2] == experts_sorted)  # each in a block of its expert


def test_bad_block_size():
    with pytest.raises(ValueError, match="block_m"):
        moe_experts_blocked(*problem(), block_m=0)
