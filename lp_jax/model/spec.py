"""Every weight of the three architectures, declared once: shape, logical axes and initialiser.

Initialisation (`lp_jax.model.init`), checkpoint loading (`lp_jax.checkpoint`) and, later, device
sharding all read these declarations, so a weight's shape is written in exactly one place.

The params pytree is a dict:
    {"embed": [V, D], "layers": [layer dict] * L, "final_norm": [D], "lm_head": [D, V] (absent if tied)}
A layer dict holds the names below; experts are stacked on a leading E axis. Gate and up
projections are kept as two arrays (`w_gate`, `w_up`) whatever the checkpoint's layout
(GPT-OSS interleaves them in one tensor; the loader splits it).

Logical axis names: vocab, embed, heads, kv_heads, head_dim, experts, mlp.
"""

from __future__ import annotations

from dataclasses import dataclass

from lp_jax.model.config import ModelConfig


@dataclass(frozen=True)
class ParamSpec:
    """A weight's declaration. `init` is "normal" (std = 1/sqrt(fan_in)), "ones" or "zeros";
    `fan_in` is the contraction size for "normal" weights."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    init: str = "normal"
    fan_in: int = 1


def _w(shape, axes, fan_in):
    return ParamSpec(tuple(shape), tuple(axes), "normal", fan_in)


def _ones(shape, axes):
    return ParamSpec(tuple(shape), tuple(axes), "ones")


def _bias(shape, axes, fan_in):
    # Biases are drawn small and random (not zero) so that tests exercise them.
    return ParamSpec(tuple(shape), tuple(axes), "normal", fan_in)


def layer_spec(config: ModelConfig) -> dict[str, ParamSpec]:
    """The weights of one decoder layer (identical structure for every layer of a model)."""
    D, H, N, A = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    F, E = config.ffn_size, config.num_experts
    spec = {
        "input_norm": _ones([D], ["embed"]),
        "post_norm": _ones([D], ["embed"]),
        "wq": _w([D, H, A], ["embed", "heads", "head_dim"], D),
        "wk": _w([D, N, A], ["embed", "kv_heads", "head_dim"], D),
        "wv": _w([D, N, A], ["embed", "kv_heads", "head_dim"], D),
        "wo": _w([H, A, D], ["heads", "head_dim", "embed"], H * A),
    }
    if config.attention_bias:
        spec |= {
            "bq": _bias([H, A], ["heads", "head_dim"], D),
            "bk": _bias([N, A], ["kv_heads", "head_dim"], D),
            "bv": _bias([N, A], ["kv_heads", "head_dim"], D),
            "bo": _bias([D], ["embed"], H * A),
        }
    if config.qk_norm:
        spec |= {"q_norm": _ones([A], ["head_dim"]), "k_norm": _ones([A], ["head_dim"])}
    if config.attention_sinks:
        spec["sinks"] = _w([H], ["heads"], 1)
    if config.is_moe:
        spec |= {
            "router": _w([D, E], ["embed", "experts"], D),
            "w_gate": _w([E, D, F], ["experts", "embed", "mlp"], D),
            "w_up": _w([E, D, F], ["experts", "embed", "mlp"], D),
            "w_down": _w([E, F, D], ["experts", "mlp", "embed"], F),
        }
        if config.router_bias:
            spec["router_bias"] = _bias([E], ["experts"], D)
        if config.expert_bias:
            spec |= {
                "b_gate": _bias([E, F], ["experts", "mlp"], D),
                "b_up": _bias([E, F], ["experts", "mlp"], D),
                "b_down": _bias([E, D], ["experts", "embed"], F),
            }
    else:
        spec |= {
            "w_gate": _w([D, F], ["embed", "mlp"], D),
            "w_up": _w([D, F], ["embed", "mlp"], D),
            "w_down": _w([F, D], ["mlp", "embed"], F),
        }
    return spec


def model_spec(config: ModelConfig) -> dict:
    """The whole params pytree as ParamSpecs (layers as a list, one dict per layer)."""
    D, V = config.hidden_size, config.vocab_size
    spec = {
        "embed": ParamSpec((V, D), ("vocab", "embed"), "normal", 1),
        "layers": [layer_spec(config) for _ in range(config.num_layers)],
        "final_norm": _ones([D], ["embed"]),
    }
    if not config.tie_word_embeddings:
        spec["lm_head"] = _w([D, V], ["embed", "vocab"], D)
    return spec


def param_count(spec) -> int:
    """Number of scalars in a spec pytree (a check on ModelConfig's accounting)."""
    if isinstance(spec, ParamSpec):
        n = 1
        for s in spec.shape:
            n *= s
        return n
    if isinstance(spec, dict):
        return sum(param_count(v) for v in spec.values())
    return sum(param_count(v) for v in spec)
