"""Expected expert traffic of a routing profile, without sampling: the simulator's counterpart
of `lp_jax.model.routing`.

For one MoE layer and one call whose rows are n_s tokens of each request s (a decode row is
n = 1 of its own request), the distinct experts loaded and the row tiles a grouped matmul streams
are random; their expectations follow from two per-profile quantities, tabulated once:

- q(z)[r]: the probability that expert of popularity rank r is among a token's K, given its
  request's affinity z. For the profile's Gumbel-top-K this is a Plackett-Luce inclusion
  probability, computed exactly (an exponential race, see `inclusion_probabilities`) for M
  quasi-random draws of the other experts' affinities, expert r's own on a fine grid.
- f_r(n) = E_z[(1 - q(z)[r])^n]: P(expert r unchosen by n tokens of one request), on a grid
  of n. Requests' affinities and tokens' noises are independent, so

      E[distinct experts] = sum_r (1 - prod_s f_r(n_s)),

  exact up to the average over the draws and the interpolation in n (log f linear in log n).

Row tiles: expert r receives R_r rows and the kernel streams its weights ceil(R_r / block_m)
times: E[tiles] = sum_r P(R_r >= 1) + sum_{j>=1} P(R_r > j block_m), with P(R_r >= 1) exact as
above and the tail from a gamma law (Wilson-Hilferty) matched to R_r's exact mean and variance.

Every layer of a profile has the same popularity law over its own permutation of the experts,
so these per-layer expectations hold for every layer; a call over L layers loads L times as many.
Units: experts and tiles per layer per call; tokens for n.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import gammaincc, ndtr, ndtri
from scipy.stats import qmc

from lp_jax.model.routing import RoutingProfile, get_profile, log_popularity

# Tokens of one request the tables cover (longer rows raise ValueError): above every preset's
# context length (GPT-OSS: 131072).
MAX_TOKENS = 1 << 18
GRID_PER_OCTAVE = 8
OWN_AFFINITY_POINTS = 49  # z in [-6, 6] every 0.25
EXPLICIT_TILES = 12  # tiles per expert summed one by one in expected_tiles; the rest integrated


def inclusion_probabilities(scores_ME: np.ndarray, top_k: int, own_scores_EH: np.ndarray | None = None,
                            num_t: int = 64) -> np.ndarray:
    """q [M, E, H] float64: P(expert e is among the top-K of scores_ME[m] + iid standard Gumbel
    noise) when e's own score is own_scores_EH[e, h] instead of scores_ME[m, e] (the others'
    scores unchanged; None: its own, H = 1), i.e. its inclusion probability when K experts are
    drawn without replacement with probabilities softmax(scores).

    Exponential race: with rates w = exp(scores), expert e's arrival time is Exp(w_e) and the
    top-K are the first K arrivals, so q_e = int_0^inf w_e exp(-w_e t) P(fewer than K others
    arrived by t) dt. The count of others is a Poisson-binomial that does not depend on e's own
    score (so every own score reuses it); its leave-one-out law comes from prefix and suffix tables
    truncated at K counts (sums of products: numerically stable). The integral runs over log t
    on num_t points (trapezoid; the integrand is smooth in log t: 64 points agree with 256 to
    1e-9) from 1e-6 / max w to 40 / w_(K+1); with their own scores sum_e q_e = K to 1e-5.
    """
    M, E = scores_ME.shape
    K = top_k
    if not 0 < K < E:
        return np.full((M, E, 1 if own_scores_EH is None else own_scores_EH.shape[1]), float(K >= E))
    top_M1 = scores_ME.max(axis=1, keepdims=True)
    w = np.exp(scores_ME - top_M1)
    own_MEH = (scores_ME[:, :, None] if own_scores_EH is None else own_scores_EH[None]) - top_M1[:, :, None]
    w_sorted = -np.sort(-w, axis=1)
    lo, hi = np.log(1e-6 / w_sorted[:, 0]), np.log(40.0 / w_sorted[:, K])
    t_MX = np.exp(lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, num_t)[None])
    trapezoid_MX = np.ones((M, num_t)) * ((hi - lo) / (num_t - 1))[:, None]
    trapezoid_MX[:, [0, -1]] *= 0.5
    p_MEX = -np.expm1(-w[:, :, None] * t_MX[:, None, :])  # P(e arrived by t)

    def add_expert(pmf_MCX, p_MX):
        out = pmf_MCX * (1.0 - p_MX[:, None])
        out[:, 1:] += pmf_MCX[:, :-1] * p_MX[:, None]
        return out

    # suffix_le[e][:, c]: P(at most c of experts e.., E-1 arrived by t), c < K.
    suffix = np.zeros((M, K, num_t))
    suffix[:, 0] = 1.0
    suffix_le = [None] * (E + 1)
    suffix_le[E] = np.cumsum(suffix, axis=1)
    for e in range(E - 1, 0, -1):
        suffix = add_expert(suffix, p_MEX[:, e])
        suffix_le[e] = np.cumsum(suffix, axis=1)
    prefix = np.zeros((M, K, num_t))
    prefix[:, 0] = 1.0
    q = np.empty((M, E, own_MEH.shape[2]))
    for e in range(E):
        # P(fewer than K others by t) = sum_c P(c of 0..e-1) P(at most K-1-c of e+1..E-1).
        others_lt_K = np.einsum("mcx,mcx->mx", prefix, suffix_le[e + 1][:, ::-1])
        rate_MHX = np.exp(own_MEH[:, e, :, None]) * t_MX[:, None, :]  # w_e t
        q[:, e] = np.einsum("mhx,mx->mh", rate_MHX * np.exp(-rate_MHX), others_lt_K * trapezoid_MX)
        prefix = add_expert(prefix, p_MEX[:, e])
    return q


@dataclass(frozen=True)
class RoutingStats:
    """Tabulated per-expert statistics of one (profile, E, K); experts indexed by popularity
    rank (the law is the same in every layer, only the permutation differs).

    n_grid_N: token counts of the table, 2^(i / GRID_PER_OCTAVE) from 1 to MAX_TOKENS.
    log_unchosen_NE: log f_r(n), f_r(n) = P(expert r unchosen by n tokens of one request).
    chosen_E: E_z[q] = P(chosen by one token). chosen_sq_E: E_z[q^2] (for the variance of an
    expert's rows).
    """

    profile: RoutingProfile
    num_experts: int
    top_k: int
    n_grid_N: np.ndarray
    log_unchosen_NE: np.ndarray
    chosen_E: np.ndarray
    chosen_sq_E: np.ndarray

    def _log_none(self, num_decodes: int, prefill_tokens: Sequence[int]) -> np.ndarray:
        """log P(expert r receives no row of the call) [E]: decode rows contribute log f_r(1)
        each, a prefill of n tokens log f_r(n), linear in log n between grid points."""
        log_none = num_decodes * self.log_unchosen_NE[0]
        last = len(self.log_unchosen_NE) - 2
        for n in prefill_tokens:
            if not 1 <= n <= MAX_TOKENS:
                raise ValueError(f"tokens of one request must be in [1, {MAX_TOKENS}], got {n}")
            x = math.log2(n) * GRID_PER_OCTAVE
            i = min(int(x), last)
            a = x - i
            log_none = log_none + (1.0 - a) * self.log_unchosen_NE[i] + a * self.log_unchosen_NE[i + 1]
        return log_none

    def expected_distinct(self, num_decodes: int, prefill_tokens: Sequence[int] = ()) -> float:
        """Expected distinct experts one layer loads (of E) for a call of `num_decodes` decode rows
        (each its own request) and, for each prefilling request, prefill_tokens[s] rows."""
        return float(np.sum(-np.expm1(self._log_none(num_decodes, prefill_tokens))))

    def expected_coverage(self, num_decodes: int, prefill_tokens: Sequence[int] = ()) -> float:
        """expected_distinct / E (a fraction)."""
        return self.expected_distinct(num_decodes, prefill_tokens) / self.num_experts

    def expected_tiles(self, num_decodes: int, prefill_tokens: Sequence[int], block_m: int) -> float:
        """Expected row tiles one layer's grouped matmul streams, sum_e ceil(rows_e / block_m)
        (the kernel reads an expert's weights once per tile), for the call described as in
        `expected_distinct`."""
        if block_m < 1:
            raise ValueError(f"block_m must be >= 1, got {block_m}")
        rows = num_decodes + sum(prefill_tokens)
        rows_sq = num_decodes + sum(n * n for n in prefill_tokens)
        m, m2 = self.chosen_E, self.chosen_sq_E
        mean_E = rows * m
        # Var(rows of one request of n tokens) = n (E[q] - E[q^2]) + n^2 Var(q): binomial given
        # its affinity z, mixed over z; requests are independent.
        var_E = rows * (m - m2) + rows_sq * (m2 - m * m)
        first_tiles = float(np.sum(-np.expm1(self._log_none(num_decodes, prefill_tokens))))
        # Tiles past the first: only for experts whose rows can exceed one tile; past 8 sd the
        # tail of even an exponential law holds < 1e-3 of its mean in tiles.
        reach_E = mean_E + 8.0 * np.sqrt(var_E)
        more = reach_E > block_m
        if not more.any():
            return first_tiles
        mean_X, var_X = mean_E[more, None], var_E[more, None]
        # P(R > j b) = P(R >= j b + 1), summed for j = 1..EXPLICIT_TILES, then the rest as an
        # integral (Euler-Maclaurin: sum_j g(x_j) = int g / b + g(x_first) / 2 for g smooth on
        # the scale of b, which holds where so many tiles are reached).
        num_j = min(int(reach_E.max() // block_m), EXPLICIT_TILES)
        x_XJ = np.arange(1, num_j + 1)[None, :] * block_m + 0.5
        tiles = first_tiles + float(np.sum(_gamma_tail(mean_X, var_X, x_XJ)))
        beyond = (reach_E[more] > (EXPLICIT_TILES + 1) * block_m)
        if beyond.any():
            x0 = (EXPLICIT_TILES + 1) * block_m + 0.5
            mean_Y, var_Y = mean_X[beyond, 0], var_X[beyond, 0]
            tiles += float(np.sum(_gamma_excess(mean_Y, var_Y, x0) / block_m + 0.5 * _gamma_tail(mean_Y, var_Y, x0)))
        return tiles


def _gamma_tail(mean, var, x):
    """P(X > x) for X gamma-distributed with this mean and variance (Wilson-Hilferty)."""
    var = np.maximum(var, 1e-12)
    mean = np.maximum(mean, 1e-12)
    k = mean * mean / var
    z = (np.cbrt(x / mean) - (1.0 - 1.0 / (9.0 * k))) / np.sqrt(1.0 / (9.0 * k))
    return ndtr(-z)


def _gamma_excess(mean, var, x):
    """E[(X - x)^+] for X gamma-distributed with this mean and variance."""
    theta = np.maximum(var, 1e-12) / np.maximum(mean, 1e-12)
    k = mean / theta
    return mean * gammaincc(k + 1.0, x / theta) - x * gammaincc(k, x / theta)


def _affinity_draws(num_draws: int, num_experts: int, seed: int) -> np.ndarray:
    """[M, E] standard normal affinities from a scrambled Sobol sequence: at M = 256, E = 128 the
    expected distinct experts vary by ~0.08 expert between seeds, half of plain Monte Carlo's."""
    u = qmc.Sobol(num_experts, scramble=True, seed=seed).random(num_draws)
    return ndtri(np.clip(u, 1e-12, 1.0 - 1e-12))


@functools.cache
def routing_stats(profile: str | RoutingProfile, num_experts: int, top_k: int, num_draws: int = 256,
                  seed: int = 0, block: int = 128) -> RoutingStats:
    """Tabulate `RoutingStats` for a profile on a layer of `num_experts` experts, top-`top_k`
    (cached: the same arguments return the same tables, so a caller need not keep them).

    num_draws: quasi-random affinity draws M the expectations average over (a power of two);
    `seed` scrambles them. Agreement with the sampler is tested in tests/test_routing_stats.py.
    block: draws computed at once (memory ~0.5 MB x block x E / 128).
    "uniform" tabulates iid uniform top-K (the random-weight router's idealisation).
    """
    profile = get_profile(profile)
    E, K = num_experts, top_k
    if not 0 < K <= E:
        raise ValueError(f"top_k must be in [1, {E}], got {K}")
    if profile.uses_router:
        q_MEH, weight_H = np.full((1, E, 1), K / E), np.ones(1)
    else:
        # Each expert's own affinity is integrated on a grid (the quantities are most sensitive
        # to it), the others' are drawn: far less variance than drawing all of them.
        by_rank = np.sort(log_popularity(profile, E, 1)[0])[::-1].astype(np.float64) / profile.noise
        scale = profile.affinity / profile.noise
        own_z = np.linspace(-6.0, 6.0, OWN_AFFINITY_POINTS)
        weight_H = np.exp(-0.5 * own_z ** 2)
        weight_H /= weight_H.sum()
        z_ME = _affinity_draws(num_draws, E, seed)
        q_MEH = np.concatenate([
            inclusion_probabilities(by_rank[None] + scale * z_ME[i:i + block], K, by_rank[:, None] + scale * own_z[None])
            for i in range(0, num_draws, block)])
    q_MEH = np.clip(q_MEH, 0.0, 1.0)
    M = q_MEH.shape[0]

    def expect(values_MEH):  # E over the draws and the own-affinity grid, per expert [E]
        return np.einsum("meh,h->e", values_MEH, weight_H) / M

    # n = 2^(i / GRID_PER_OCTAVE): f_r(n) is defined for any real n >= 0, so the grid is exactly
    # geometric and a lookup needs no search.
    n_grid = 2.0 ** (np.arange(int(math.log2(MAX_TOKENS)) * GRID_PER_OCTAVE + 1) / GRID_PER_OCTAVE)
    log1m_q = np.log1p(-np.minimum(q_MEH, 1.0 - 1e-12))
    # (1 - q)^n for the first octave, then each octave squares the one before (2n = n + n).
    octave = [np.exp(n * log1m_q) for n in n_grid[:GRID_PER_OCTAVE]]
    unchosen = []
    for i in range(len(n_grid)):
        if i >= GRID_PER_OCTAVE:
            octave[i % GRID_PER_OCTAVE] = np.square(octave[i % GRID_PER_OCTAVE])
        unchosen.append(expect(octave[i % GRID_PER_OCTAVE]))
    unchosen = np.stack(unchosen)
    log_unchosen = np.log(np.maximum(unchosen, 1e-300))
    tables = (n_grid, log_unchosen, expect(q_MEH), expect(q_MEH * q_MEH))
    for t in tables:
        t.setflags(write=False)  # shared by every caller through the cache
    return RoutingStats(profile, E, K, *tables)
