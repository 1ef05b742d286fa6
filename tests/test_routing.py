"""The routing models (lp_jax.model.routing): deterministic per request, calibrated to the paper,
gate weights as the model's own router gives them."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lp_jax.model.config import TINY_GPT_OSS, TINY_QWEN3_MOE
from lp_jax.model import routing as R
from lp_jax.model.layers import gate_weights, route

PROFILE = R.QWEN3_PAPER
E, K, L = 128, 8, 4
LOG_POP = jnp.asarray(R.log_popularity(PROFILE, E, L))


@jax.jit
def ids_all_layers(seed_T, pos_T):
    """[L, T, K] ids of each row at every layer."""
    return jax.vmap(lambda l: R.profile_ids(PROFILE, LOG_POP[l], seed_T, pos_T, l, K))(jnp.arange(L))


def rows(seeds, positions, pad_to=None):
    """[L, n, K] ids of the n given rows; pad_to: run them among other requests' rows in a
    batch of that many (the fillers' seeds and positions random)."""
    n = len(seeds)
    seeds, positions = np.asarray(seeds), np.asarray(positions)
    if pad_to:
        rng = np.random.default_rng(n)
        seeds = np.concatenate([seeds, rng.integers(0, 2**31 - 1, pad_to - n)])
        positions = np.concatenate([positions, rng.integers(0, 5000, pad_to - n)])
    return np.asarray(ids_all_layers(jnp.asarray(seeds, jnp.int32), jnp.asarray(positions, jnp.int32)))[:, :n]


def test_request_ids_do_not_depend_on_the_batch():
    # Request 7's prompt alone, then shuffled among 54 other requests' rows.
    alone = rows([7] * 10, range(10))
    rng = np.random.default_rng(0)
    seeds = np.concatenate([[7] * 10, rng.integers(0, 2**31 - 1, 54)])
    pos = np.concatenate([np.arange(10), rng.integers(0, 5000, 54)])
    order = rng.permutation(len(seeds))
    mixed = rows(seeds[order], pos[order])
    np.testing.assert_array_equal(mixed[:, np.argsort(order)][:, :10], alone)


def test_positions_are_absolute_so_chunks_and_decodes_match_the_whole_prompt():
    whole = rows([3] * 12, range(12), pad_to=64)
    chunk = rows([3] * 4, range(5, 9), pad_to=64)  # a prefill chunk at positions 5..8
    decode = rows([3], [11], pad_to=64)  # a decode row at position 11
    np.testing.assert_array_equal(chunk, whole[:, 5:9])
    np.testing.assert_array_equal(decode, whole[:, 11:12])


def test_ids_are_distinct_valid_and_differ_between_requests_positions_and_layers():
    ids = rows([1, 1, 2], [0, 1, 0], pad_to=64)
    assert ids.min() >= 0 and ids.max() < E
    for l, t in itertools.product(range(L), range(3)):
        assert len(set(ids[l, t].tolist())) == K
    assert not np.array_equal(ids[:, 0], ids[:, 1])  # another position
    assert not np.array_equal(ids[:, 0], ids[:, 2])  # another request
    assert not np.array_equal(ids[0], ids[1])  # another layer


def test_log_popularity_is_one_law_over_a_permutation_per_layer():
    lp = R.log_popularity(PROFILE, E, 3)
    np.testing.assert_allclose(np.sort(lp[0]), np.sort(lp[2]), rtol=1e-6)
    np.testing.assert_allclose(np.exp(lp.astype(np.float64)).sum(axis=1), 1.0, rtol=1e-5)
    assert np.argmax(lp[0]) != np.argmax(lp[1]) or np.argmax(lp[1]) != np.argmax(lp[2])
    np.testing.assert_array_equal(lp, R.log_popularity(PROFILE, E, 3))  # deterministic


@pytest.mark.parametrize("config", [TINY_QWEN3_MOE, TINY_GPT_OSS], ids=lambda c: c.name)
def test_gate_weights_of_the_routers_own_choice_are_the_routers_weights(config):
    # With the ids the router itself picks, gate_weights reproduces `route` (uniform unchanged).
    rng = np.random.default_rng(1)
    lp = {"router": jnp.asarray(rng.standard_normal((config.hidden_size, config.num_experts)), jnp.float32)}
    if config.router_bias:
        lp["router_bias"] = jnp.asarray(rng.standard_normal(config.num_experts), jnp.float32)
    h = jnp.asarray(rng.standard_normal((9, config.hidden_size)), jnp.float32) / 8
    weights, ids = route(config, lp, h)
    logits = h @ lp["router"] + lp.get("router_bias", 0.0)
    np.testing.assert_allclose(gate_weights(config, logits, ids), weights, rtol=1e-5, atol=1e-6)


def test_gate_weights_follow_each_architectures_router_for_other_ids():
    logits = jnp.asarray([[0.5, -1.0, 2.0, 0.0]])
    ids = jnp.asarray([[1, 3]])
    p = np.exp([0.5, -1.0, 2.0, 0.0]) / np.exp([0.5, -1.0, 2.0, 0.0]).sum()
    qwen = np.asarray(gate_weights(TINY_QWEN3_MOE, logits, ids))[0]
    np.testing.assert_allclose(qwen, p[[1, 3]] / p[[1, 3]].sum(), rtol=1e-6)
    unnormalised = np.asarray(gate_weights(TINY_QWEN3_MOE.replace(norm_topk_prob=False), logits, ids))[0]
    np.testing.assert_allclose(unnormalised, p[[1, 3]], rtol=1e-6)
    gpt = np.asarray(gate_weights(TINY_GPT_OSS, logits, ids))[0]
    np.testing.assert_allclose(gpt, np.exp([-1.0, 0.0]) / np.exp([-1.0, 0.0]).sum(), rtol=1e-6)


def test_fitted_profile_meets_every_paper_coverage_within_5_points():
    """The sampler's coverage (16 layers, fixed request seeds) against PAPER_COVERAGE, all rows
    in one call: 1024 decode rows of distinct requests (8 batches of each size are disjoint
    slices of them), 8 prompts of 512 tokens and one of 8192."""
    rng = np.random.default_rng(2026)
    seeds = [rng.integers(0, 2**31 - 1, 1024)] + [np.full(n, s) for n, s in [(512, i) for i in range(8)] + [(8192, 99)]]
    pos = [rng.integers(0, 4096, 1024)] + [np.arange(512)] * 8 + [np.arange(8192)]
    ids = R.sampled_ids(PROFILE, E, K, 16, np.concatenate(seeds), np.concatenate(pos))
    starts = np.cumsum([0, 1024] + [512] * 8)
    for target in R.PAPER_COVERAGE:
        if target.kind == "decode":
            parts = [ids[:, i * target.tokens:(i + 1) * target.tokens] for i in range(8)]
        else:
            parts = [ids[:, a:a + 512] for a in starts[1:-1]] if target.tokens == 512 else [ids[:, starts[-1]:]]
        coverage = np.mean([R.count_distinct(p, E) for p in parts]) / E
        assert abs(coverage - target.coverage) <= 0.05, (target, coverage)


def test_uniform_profile_is_iid_uniform_without_the_router():
    # Measured without a model, "uniform" is its idealisation: K of E uniformly per token.
    distinct = R.count_distinct(R.sampled_ids(R.get_profile("uniform"), E, K, 16, np.arange(64), np.zeros(64)), E)
    assert abs(distinct.mean() - E * (1 - (1 - K / E) ** 64)) < 1.5  # 125.9


def test_unknown_profile_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="known profiles: uniform, qwen3-paper"):
        R.get_profile("zipf")
    assert R.get_profile("qwen3-paper") is R.QWEN3_PAPER
    assert R.get_profile("uniform").uses_router and not R.QWEN3_PAPER.uses_router


@pytest.mark.parametrize("config", [TINY_QWEN3_MOE, TINY_GPT_OSS], ids=lambda c: c.name)
def test_model_forward_routes_by_the_profile_and_uniform_is_the_router(config):
    from lp_jax.model import init_params, reference_forward

    params = init_params(config, seed=0)
    tokens = np.arange(1, 12)
    logits, ids = reference_forward(config, params, tokens)
    same, same_ids = reference_forward(config, params, tokens, routing=R.get_profile("uniform"))
    np.testing.assert_array_equal(np.asarray(same), np.asarray(logits))
    _, profiled = reference_forward(config, params, tokens, routing=PROFILE, routing_seed=5)
    expected = R.sampled_ids(PROFILE, config.num_experts, config.num_experts_per_tok, config.num_layers,
                             np.full(11, 5), np.arange(11))
    np.testing.assert_array_equal(np.stack([np.asarray(i) for i in profiled]), expected)
    assert not np.array_equal(np.stack([np.asarray(i) for i in ids]), expected)
