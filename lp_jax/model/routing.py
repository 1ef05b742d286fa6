"""Routing models: which experts a token of a random-weight model goes to.

A random-weight router sends tokens almost uniformly (a 128-expert top-8 layer hits 122-125
distinct experts at 64 tokens; iid uniform predicts 125.9), so every decode batch loads nearly
every expert and the expert traffic layered prefill saves does not show. A *routing profile*
replaces the router's choice of experts with a calibrated statistical model; the router still
computes its logits (its cost stays), and the chosen experts' gate weights come from those logits
exactly as the model's own router would weight them.

Profiles:
- "uniform": the model's own router (top-k of its logits). Today's behaviour; near uniform with
  random weights. Checkpoints always route this way.
- calibrated profiles ("qwen3-paper"): for token t of request s at layer l,

      ids = top-K over experts e of  log_pop_l[e] + affinity * z[s, l, e] + noise * gumbel[s, l, t, e]

  * log_pop_l: a Zipf-Mandelbrot law over a per-layer random permutation of the experts,
    log_pop_l[perm_l[r]] = -exponent * log(r / E + offset) for popularity ranks r = 1..E;
  * z ~ N(0, 1) drawn once per (request seed, layer): tokens of one request prefer the same
    experts;
  * gumbel: per-token Gumbel noise drawn from (request seed, layer, position). Gumbel-top-K of
    fixed scores is sampling K experts without replacement with probabilities softmax(scores),
    so `noise` sets a temperature; top-K is unchanged by scaling every term, so noise = 1 and
    only exponent and affinity (in units of the noise) are fitted.
  A request's ids depend only on its own seed, the layer and the position: never on the batch,
  the schedule or the other rows. Offset is a fraction of E, so the same parameters scale to any
  expert count (GPT-OSS's 32, the tiny presets' 8).

Shapes: T token rows, E experts, K experts per token, L layers. All functions run inside a jitted
layer step on CPU and GPU; the draws cost 2 x T x E random numbers per layer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

UNIFORM = "uniform"


@dataclass(frozen=True)
class RoutingProfile:
    """A routing model (frozen and hashable: a static argument of jit).

    exponent: Zipf-Mandelbrot exponent of the per-layer popularity (log units of the noise).
    offset: Zipf-Mandelbrot offset as a fraction of E (flattens the head of the law).
    affinity: standard deviation of a request's per-layer log-affinity for each expert.
    noise: scale of the per-token Gumbel noise (1: see the module docstring).
    seed: seeds the per-layer permutations and every draw (a profile is one fixed world).
    """

    name: str
    exponent: float = 0.0
    offset: float = 0.0
    affinity: float = 0.0
    noise: float = 1.0
    seed: int = 0

    @property
    def uses_router(self) -> bool:
        """True for "uniform": the ids are the router's own top-k."""
        return self.name == UNIFORM


# Fitted by scripts/fit_routing.py (output: benchmarks/results/routing_fit.md) to the expert
# coverage (distinct experts loaded / E, mean over layers) of Qwen3-30B-A3B (E=128, top-8):
# - decode batches of B distinct ShareGPT sequences, one token each: B=16 <50 % (taken as 48),
#   32 ~55 %, 64 <70 % (taken as 68), 128 86.3 % (arXiv 2510.08055, Table 1);
# - one 8192-token arXiv prompt: 57.1 GB of expert weights in one pass, 764.1 GB as sixteen
#   512-token chunks (the paper's code, scale-snu/layered-prefill graph.py), i.e. 98.5 % of
#   all experts for the whole prompt and 82 % for one 512-token chunk.
# Fitted (sampled) coverage: 44.1 / 57.7 / 71.1 / 83.4 % for the decode batches, 82.0 % and
# 98.5 % for the prompts: all within 4 points. The remaining error is the family's: its decode
# coverage rises ~13 points per doubling of the batch where the paper's rises 7, 13 and 18.
# Independent check, not fitted: the top 20 % of experts take 65 % of the tokens, as
# ai-dynamo/aiconfigurator docs/POWER_LAW_DISTRIBUTION.md reports for Qwen3-235B (~65 %, its
# load-distribution exponent alpha ~1.2; the rank-law exponent here is on another scale). No
# such figures exist for GPT-OSS-20B in those sources, so GPT-OSS uses these parameters scaled
# to its 32 experts (offset is a fraction of E).
QWEN3_PAPER = RoutingProfile(name="qwen3-paper", exponent=5.507, offset=0.6, affinity=1.484)

PROFILES: dict[str, RoutingProfile] = {p.name: p for p in (RoutingProfile(UNIFORM), QWEN3_PAPER)}


@dataclass(frozen=True)
class CoverageTarget:
    """A published expert coverage: `tokens` tokens in one call, from `tokens` distinct requests
    one token each ("decode") or from one request ("prompt"), load `coverage` of the experts
    (a fraction, mean over layers)."""

    kind: str
    tokens: int
    coverage: float
    source: str


# Qwen3-30B-A3B, the figures QWEN3_PAPER is fitted to (see above); each within 5 points.
PAPER_COVERAGE = (
    CoverageTarget("decode", 16, 0.48, "paper Table 1: <50 %"),
    CoverageTarget("decode", 32, 0.55, "paper Table 1: ~55 %"),
    CoverageTarget("decode", 64, 0.68, "paper Table 1: <70 %"),
    CoverageTarget("decode", 128, 0.863, "paper Table 1: 86.3 %"),
    CoverageTarget("prompt", 512, 0.82, "paper code: 764.1 GB / 16 chunks of an 8192-token prompt"),
    CoverageTarget("prompt", 8192, 0.985, "paper code: 57.1 GB for the 8192-token prompt in one pass"),
)


def get_profile(name: str | RoutingProfile) -> RoutingProfile:
    """The profile called `name` (a profile is returned as is); ValueError listing the known
    profiles otherwise."""
    if isinstance(name, RoutingProfile):
        return name
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown routing profile {name!r}; known profiles: {', '.join(PROFILES)}") from None


def log_popularity(profile: RoutingProfile, num_experts: int, num_layers: int) -> np.ndarray:
    """log_pop [L, E] float32: each layer's Zipf-Mandelbrot log-popularity over its own random
    permutation of the experts (normalised so each layer's softmax sums to 1)."""
    E = num_experts
    by_rank = -profile.exponent * np.log(np.arange(1, E + 1) / E + profile.offset)
    by_rank -= np.log(np.sum(np.exp(by_rank - by_rank.max()))) + by_rank.max()
    out = np.empty((num_layers, E), np.float32)
    for layer in range(num_layers):
        perm = np.random.default_rng([profile.seed, layer]).permutation(E)
        out[layer, perm] = by_rank
    return out


def _request_layer_key(profile: RoutingProfile, seed, layer):
    key = jax.random.fold_in(jax.random.key(profile.seed), seed)
    return jax.random.fold_in(key, layer)


def profile_scores(profile: RoutingProfile, log_pop_E, seed_T, pos_T, layer):
    """Scores [T, E] f32 whose top-K are the profile's ids: log_pop + affinity * z + noise * gumbel.

    log_pop_E: this layer's row of `log_popularity`. seed_T: int32 request seed of each row
    (>= 0). pos_T: int32 position of each row in its request. layer: int or traced int32.
    """
    E = log_pop_E.shape[-1]

    def row(seed, pos):
        key = _request_layer_key(profile, seed, layer)
        z = jax.random.normal(jax.random.fold_in(key, 0), (E,), jnp.float32)
        g = jax.random.gumbel(jax.random.fold_in(jax.random.fold_in(key, 1), pos), (E,), jnp.float32)
        return profile.affinity * z + profile.noise * g

    return log_pop_E.astype(jnp.float32) + jax.vmap(row)(seed_T, pos_T)


def profile_ids(profile: RoutingProfile, log_pop_E, seed_T, pos_T, layer, top_k: int):
    """The profile's expert ids [T, K] int32 (see `profile_scores`)."""
    _, ids = jax.lax.top_k(profile_scores(profile, log_pop_E, seed_T, pos_T, layer), top_k)
    return ids.astype(jnp.int32)


@dataclass(frozen=True)
class RowRouting:
    """What a calibrated profile needs to choose the experts of one layer call's rows (built
    inside the traced step): this layer's log-popularity [E], each row's request seed [T] and
    position [T] (int32), and the layer index (int or traced)."""

    profile: RoutingProfile
    log_pop_E: jax.Array
    seed_T: jax.Array
    pos_T: jax.Array
    layer: object

    def ids(self, top_k: int):
        return profile_ids(self.profile, self.log_pop_E, self.seed_T, self.pos_T, self.layer, top_k)


def sampled_ids(profile: RoutingProfile, num_experts: int, top_k: int, num_layers: int, seed_T, pos_T) -> np.ndarray:
    """The ids [L, T, K] int32 a calibrated profile gives the rows (seed_T, pos_T) at each of
    `num_layers` layers, by running the sampler (jitted once per row count): for measuring
    coverage without a model, where only the ids matter. For "uniform" this is its
    idealisation, K of E drawn uniformly per token (a model's router needs hidden states)."""
    log_pop_LE = jnp.asarray(log_popularity(profile, num_experts, num_layers))
    return np.asarray(_sampled_ids(profile, top_k, log_pop_LE, jnp.asarray(seed_T, jnp.int32),
                                   jnp.asarray(pos_T, jnp.int32)))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sampled_ids(profile, top_k, log_pop_LE, seed_T, pos_T):
    def layer(carry, inputs):
        log_pop_E, l = inputs
        return carry, profile_ids(profile, log_pop_E, seed_T, pos_T, l, top_k)

    return jax.lax.scan(layer, 0, (log_pop_LE, jnp.arange(log_pop_LE.shape[0])))[1]


def count_distinct(ids_LTK: np.ndarray, num_experts: int) -> np.ndarray:
    """Distinct experts [L] int among each layer's ids (numpy; ids [L, T, K] or [L, T*K])."""
    L = ids_LTK.shape[0]
    flat = ids_LTK.reshape(L, -1) + num_experts * np.arange(L)[:, None]
    hit = np.bincount(flat.reshape(-1), minlength=L * num_experts).reshape(L, num_experts)
    return np.sum(hit > 0, axis=1)
