"""The analytic counterpart of the routing sampler (lp_jax.model.routing_stats) against exact
enumeration and against the sampler itself."""

import itertools

import numpy as np
import pytest

from lp_jax.model import routing as R
from lp_jax.model.routing_stats import inclusion_probabilities, routing_stats

E, K = 128, 8


def plackett_luce_inclusion(scores, k):
    """Exact inclusion probabilities by enumerating every ordered draw of k without replacement."""
    w = np.exp(np.asarray(scores, np.float64))
    q = np.zeros(len(w))
    for seq in itertools.permutations(range(len(w)), k):
        left, p = w.sum(), 1.0
        for i in seq:
            p *= w[i] / left
            left -= w[i]
        q[list(seq)] += p
    return q


@pytest.mark.parametrize("k", [1, 2, 3])
def test_inclusion_probabilities_equal_exact_enumeration(k):
    scores = np.asarray([[0.3, -2.0, 1.7, 0.0, -0.5, 4.0], [0.0] * 6, [-9.0, 0.0, 0.1, 0.2, 3.0, 3.0]])
    q = inclusion_probabilities(scores, k)[:, :, 0]
    for row, got in zip(scores, q):
        np.testing.assert_allclose(got, plackett_luce_inclusion(row, k), atol=2e-6)


def test_own_scores_replace_one_experts_score_at_a_time():
    scores = np.asarray([[0.3, -2.0, 1.7, 0.0, -0.5]])
    own = np.asarray([[1.0, -1.0]] * 5)  # each expert's own score, two alternatives
    q = inclusion_probabilities(scores, 2, own)
    for e, h in itertools.product(range(5), range(2)):
        row = scores[0].copy()
        row[e] = own[e, h]
        assert abs(q[0, e, h] - plackett_luce_inclusion(row, 2)[e]) < 2e-6


@pytest.fixture(scope="module")
def stats():
    return routing_stats(R.QWEN3_PAPER, E, K)


LAYERS, REPS = 16, 6


def sampled_counts(rng, num_decodes, prefill_tokens):
    """Rows per expert [REPS * LAYERS, E] of REPS independent calls (one sampler run: the
    calls' rows side by side, each call's requests its own)."""
    seeds, pos = [], []
    for _ in range(REPS):
        seeds += [rng.integers(0, 2**31 - 1, num_decodes)] + [np.full(n, rng.integers(0, 2**31 - 1)) for n in prefill_tokens]
        pos += [rng.integers(0, 4096, num_decodes)] + [np.arange(n) for n in prefill_tokens]
    ids = R.sampled_ids(R.QWEN3_PAPER, E, K, LAYERS, np.concatenate(seeds), np.concatenate(pos))
    calls = np.split(ids, REPS, axis=1)  # [LAYERS, rows of a call, K] each
    return np.concatenate([[np.bincount(c[l].ravel(), minlength=E) for l in range(LAYERS)] for c in calls])


# The stated error: expected distinct experts within 1 expert of the sampler (of 128; the
# sampler's own standard error here is ~0.3), expected tiles within 2 %.
@pytest.mark.parametrize("num_decodes, prefills, block_m", [
    (16, (), 16), (64, (), 16), (128, (), 32), (0, (512,), 64), (64, (300, 200), 64), (8, (4096,), 64)])
def test_expected_distinct_and_tiles_agree_with_the_sampler(stats, num_decodes, prefills, block_m):
    counts = sampled_counts(np.random.default_rng(num_decodes + sum(prefills)), num_decodes, prefills)
    distinct = np.mean(np.sum(counts > 0, axis=1))
    tiles = np.mean(np.sum(np.ceil(counts / block_m), axis=1))
    assert abs(stats.expected_distinct(num_decodes, prefills) - distinct) < 1.0
    assert abs(stats.expected_tiles(num_decodes, prefills, block_m) / tiles - 1) < 0.02


def test_expectations_of_simple_calls(stats):
    assert stats.expected_distinct(0) == 0.0 and stats.expected_tiles(0, (), 16) == 0.0
    assert stats.expected_distinct(1) == pytest.approx(K, rel=2e-3)  # one token: exactly K experts
    assert stats.expected_tiles(1, (), 16) == pytest.approx(K, rel=2e-3)
    # A decode row is a one-token request.
    assert stats.expected_distinct(3, (5,)) == pytest.approx(stats.expected_distinct(0, (1, 1, 1, 5)), rel=1e-12)
    # More tokens load more experts; a request's own tokens share experts, distinct requests' do not.
    grid = [stats.expected_distinct(0, (n,)) for n in (1, 3, 10, 100, 1000, 10000)]
    assert all(a < b for a, b in zip(grid, grid[1:]))
    assert stats.expected_distinct(64) > stats.expected_distinct(0, (64,))
    assert stats.expected_coverage(0, (8192,)) == pytest.approx(stats.expected_distinct(0, (8192,)) / E)


def test_uniform_statistics_are_iid_uniform():
    st = routing_stats("uniform", E, K)
    for n in (1, 16, 64):
        assert st.expected_distinct(n) == pytest.approx(E * (1 - (1 - K / E) ** n), rel=1e-9)
        assert st.expected_distinct(0, (n,)) == pytest.approx(E * (1 - (1 - K / E) ** n), rel=1e-9)


def test_gpt_oss_scaling_uses_the_same_parameters_on_32_experts():
    st = routing_stats(R.QWEN3_PAPER, 32, 4)
    assert st.expected_distinct(1) == pytest.approx(4, rel=2e-3)
    assert 0 < st.expected_coverage(16) < st.expected_coverage(0, (8192,)) <= 1


def test_bad_arguments_are_refused(stats):
    with pytest.raises(ValueError, match="tokens of one request"):
        stats.expected_distinct(0, (0,))
    with pytest.raises(ValueError, match="block_m"):
        stats.expected_tiles(4, (), 0)
    with pytest.raises(ValueError, match="top_k"):
        routing_stats(R.QWEN3_PAPER, 8, 9)
