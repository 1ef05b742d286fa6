"""How many experts a layer-range call touches, and how many row tiles its grouped matmul streams:
the simulator's view of routing.

An `ExpertLoad` answers, for one MoE layer and one call whose rows are `num_decodes` decode rows
(each its own request) and prefill_tokens[s] rows of each prefilling request s:

    expected_distinct(num_decodes, prefill_tokens) -> experts loaded (of E)
    expected_tiles(num_decodes, prefill_tokens, block_m) -> sum over experts of ceil(rows_e / block_m)

(the names of the routing model's `RoutingStats`, lp_jax.model.routing_stats, which answers the
same for calibrated routing profiles: `expert_load` picks by the engine's `routing` option).
`UniformExpertLoad` is iid uniform top-K routing, the idealisation of a random-weight router:
every token picks K of E experts uniformly without replacement, independently of every other
token.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import numpy as np
from scipy import special

from lp_jax.model.routing import UNIFORM, get_profile
from lp_jax.model.routing_stats import routing_stats


class ExpertLoad(Protocol):
    num_experts: int
    top_k: int

    def expected_distinct(self, num_decodes: int, prefill_tokens: Sequence[int] = ()) -> float: ...

    def expected_tiles(self, num_decodes: int, prefill_tokens: Sequence[int], block_m: int) -> float: ...


class UniformExpertLoad:
    """iid uniform top-K routing over E experts: an expert is among one token's K with probability
    p = K / E, so with n rows it receives Binomial(n, p) rows and is loaded with probability
    1 - (1 - p)^n."""

    def __init__(self, num_experts: int, top_k: int):
        if not 0 < top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
        self.num_experts, self.top_k = num_experts, top_k
        self._p = top_k / num_experts
        self._log_unchosen = math.log1p(-self._p) if self._p < 1 else 0.0
        self._tiles: dict[tuple[int, int], float] = {}

    def expected_distinct(self, num_decodes: int, prefill_tokens: Sequence[int] = ()) -> float:
        n = num_decodes + sum(prefill_tokens)
        if self._p == 1:
            return float(self.num_experts * (n > 0))
        return self.num_experts * -math.expm1(n * self._log_unchosen)

    def expected_tiles(self, num_decodes: int, prefill_tokens: Sequence[int], block_m: int) -> float:
        """E * E[ceil(R / block_m)] for R ~ Binomial(n, K / E): E[ceil(R / b)] = sum_{j >= 0} P(R > j b)."""
        if block_m < 1:
            raise ValueError(f"block_m must be >= 1, got {block_m}")
        n = num_decodes + sum(prefill_tokens)
        key = (n, block_m)
        if key not in self._tiles:
            if len(self._tiles) > 65536:
                self._tiles.clear()
            j = np.arange(0, n // block_m + 1) * block_m
            self._tiles[key] = float(self.num_experts * np.sum(special.bdtrc(j, n, self._p))) if n else 0.0
        return self._tiles[key]


class MemoisedLoad:
    """An ExpertLoad whose expected distinct experts are kept per call shape: a serving run asks
    the same few questions again and again (every decode-only iteration of a batch size), and a
    calibrated profile's answer costs 10-20 us. (Expected tiles are kept by WorkModel.)"""

    def __init__(self, load, limit: int = 1 << 16):
        self.load, self.limit = load, limit
        self.num_experts, self.top_k = load.num_experts, load.top_k
        self._distinct: dict[tuple, float] = {}

    def expected_distinct(self, num_decodes: int, prefill_tokens: Sequence[int] = ()) -> float:
        key = (num_decodes, tuple(prefill_tokens))
        if key not in self._distinct:
            if len(self._distinct) > self.limit:
                self._distinct.clear()
            self._distinct[key] = self.load.expected_distinct(num_decodes, prefill_tokens)
        return self._distinct[key]

    def expected_tiles(self, num_decodes: int, prefill_tokens: Sequence[int], block_m: int) -> float:
        return self.load.expected_tiles(num_decodes, prefill_tokens, block_m)


def expert_load(num_experts: int, top_k: int, routing: str = UNIFORM) -> ExpertLoad:
    """The ExpertLoad of a routing profile (`lp_jax.model.routing`): "uniform" (the random-weight
    router) as iid uniform top-K, exactly; a calibrated profile through the routing model's
    `RoutingStats` (its analytic expected distinct experts and row tiles). ValueError naming the
    known profiles for any other name."""
    profile = get_profile(routing)
    if profile.uses_router:
        return UniformExpertLoad(num_experts, top_k)
    return MemoisedLoad(routing_stats(profile, num_experts, top_k))  # tabulated once per process
