"""How many experts a layer-range call touches, and how many row tiles its grouped matmul streams:
the simulator's view of routing.

An `ExpertLoad` answers, for one MoE layer and one call whose rows are `num_decodes` decode rows
(each its own request) and prefill_tokens[s] rows of each prefilling request s:

    expected_distinct(num_decodes, prefill_tokens) -> experts loaded (of E)
    expected_tiles(num_decodes, prefill_tokens, block_m) -> sum over experts of ceil(rows_e / block_m)

(the names of the routing model's `RoutingStats`, lp_jax.model.routing_stats, which answers the
same for calibrated routing profiles). `UniformExpertLoad` is iid uniform top-K routing, the
idealisation of a random-weight router: every token picks K of E experts uniformly without
replacement, independently of every other token.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import numpy as np
from scipy import special


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


def expert_load(num_experts: int, top_k: int, routing: str = "uniform") -> ExpertLoad:
    """The ExpertLoad of a routing profile; only "uniform" until the routing model's
    RoutingStats are wired in (issue 16)."""
    if routing != "uniform":
        raise ValueError(f"unknown routing profile {routing!r} for the simulator; known: uniform")
    return UniformExpertLoad(num_experts, top_k)
