"""Model configurations: the real architectures and tiny test versions of each.

`ModelConfig` is frozen and hashable so it can be a static argument of `jax.jit`. The constants of
the real presets come from the published model configs (HuggingFace `config.json` of
Qwen/Qwen3-30B-A3B, openai/gpt-oss-20b, Qwen/Qwen3-8B and HuggingFaceTB/SmolLM2-135M-Instruct, the
last also as its GGUF metadata says) and agree with transformers' config classes. Engine options
live in `lp_jax.engine.config`.

Llama is dense Qwen3 without the q/k norms (RoPE on whole heads, rotate-half convention once
llama.cpp's row permutation is undone; see `lp_jax.checkpoint.gguf`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

ARCHITECTURES = ("qwen3_moe", "gpt_oss", "qwen3", "llama")


@dataclass(frozen=True)
class YarnScaling:
    """YaRN RoPE scaling (GPT-OSS), with transformers' parameter names."""

    factor: float
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    original_max_position_embeddings: int = 4096
    truncate: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """One decoder-only transformer. Shape letters used across the code base:

    T token rows, D hidden size, V vocabulary, H query heads, N key/value heads, A head dim,
    E experts, F expert (or dense MLP) hidden size, K experts per token, L layers.
    """

    name: str
    arch: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    # Attention.
    qk_norm: bool = False
    attention_bias: bool = False
    attention_sinks: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()  # "full" or "sliding", one per layer
    rope_scaling: YarnScaling | None = None
    # Feed-forward: dense when num_experts == 0.
    intermediate_size: int = 0
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    router: str = "softmax_topk"  # Qwen3: softmax over all, top-k; GPT-OSS: "topk_softmax"
    router_bias: bool = False
    expert_bias: bool = False
    activation: str = "swiglu"  # or "clamped_swiglu" (GPT-OSS)
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    tie_word_embeddings: bool = False
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; supported: {', '.join(ARCHITECTURES)}")
        if not self.layer_types:
            object.__setattr__(self, "layer_types", ("full",) * self.num_layers)
        if len(self.layer_types) != self.num_layers:
            raise ValueError(f"{self.name}: {len(self.layer_types)} layer types for {self.num_layers} layers")
        bad = set(self.layer_types) - {"full", "sliding"}
        if bad:
            raise ValueError(f"{self.name}: unknown layer types {sorted(bad)}")
        if "sliding" in self.layer_types and not self.sliding_window:
            raise ValueError(f"{self.name}: sliding layers need sliding_window")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"{self.name}: {self.num_heads} heads not a multiple of {self.num_kv_heads} KV heads")
        if self.router not in ("softmax_topk", "topk_softmax"):
            raise ValueError(f"{self.name}: unknown router {self.router!r}")
        if self.activation not in ("swiglu", "clamped_swiglu"):
            raise ValueError(f"{self.name}: unknown activation {self.activation!r}")
        if self.is_moe and not (0 < self.num_experts_per_tok <= self.num_experts):
            raise ValueError(f"{self.name}: top-{self.num_experts_per_tok} of {self.num_experts} experts")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def ffn_size(self) -> int:
        """F: the hidden size of one expert, or of the dense MLP."""
        return self.moe_intermediate_size if self.is_moe else self.intermediate_size

    def layer_window(self, layer: int) -> int | None:
        """Sliding-window length (keys visible to a query, itself included) of a layer; None = full."""
        return self.sliding_window if self.layer_types[layer] == "sliding" else None

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # --- parameter accounting (lp-jax info) -------------------------------------------------
    def attention_params_per_layer(self) -> int:
        D, H, N, A = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        n = D * H * A * 2 + D * N * A * 2  # q, o, k, v
        if self.attention_bias:
            n += H * A + 2 * N * A + D
        if self.qk_norm:
            n += 2 * A
        if self.attention_sinks:
            n += H
        return n + 2 * D  # input and post-attention norms

    def expert_params(self) -> int:
        """Parameters of one expert (gate, up, down and their biases)."""
        D, F = self.hidden_size, self.ffn_size
        return 3 * D * F + ((2 * F + D) if self.expert_bias else 0)

    def router_params(self) -> int:
        return self.hidden_size * self.num_experts + (self.num_experts if self.router_bias else 0)

    def ffn_params_per_layer(self) -> int:
        if self.is_moe:
            return self.num_experts * self.expert_params() + self.router_params()
        return 3 * self.hidden_size * self.intermediate_size

    def layer_params(self) -> int:
        return self.attention_params_per_layer() + self.ffn_params_per_layer()

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def unembedding_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def total_params(self) -> int:
        return (self.num_layers * self.layer_params() + self.embedding_params()
                + self.unembedding_params() + self.hidden_size)

    def active_params(self, count_embedding: bool = False) -> int:
        """Parameters one token touches: attention, router, K experts, norms and the unembedding.

        The embedding is a row lookup, not a matmul, so it is left out unless asked for
        (GPT-OSS publishes 3.6B active this way; Qwen publishes 3.3B counting both).
        """
        ffn = (self.num_experts_per_tok * self.expert_params() + self.router_params()
               if self.is_moe else self.ffn_params_per_layer())
        n = self.num_layers * (self.attention_params_per_layer() + ffn) + self.hidden_size
        n += self.vocab_size * self.hidden_size  # unembedding (tied or not, it is read per token)
        if count_embedding:
            n += self.embedding_params()
        return n


def _gpt_oss_layer_types(num_layers: int) -> tuple[str, ...]:
    # gpt-oss alternates, starting with a sliding layer (transformers' GptOssConfig default).
    return tuple("sliding" if i % 2 == 0 else "full" for i in range(num_layers))


QWEN3_30B_A3B = ModelConfig(
    name="qwen3-30b-a3b", arch="qwen3_moe", vocab_size=151936, hidden_size=2048, num_layers=48,
    num_heads=32, num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
    max_position_embeddings=40960, qk_norm=True, num_experts=128, num_experts_per_tok=8,
    moe_intermediate_size=768, intermediate_size=6144, norm_topk_prob=True,
    eos_token_ids=(151645, 151643),
)

GPT_OSS_20B = ModelConfig(
    name="gpt-oss-20b", arch="gpt_oss", vocab_size=201088, hidden_size=2880, num_layers=24,
    num_heads=64, num_kv_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=150000.0,
    max_position_embeddings=131072, attention_bias=True, attention_sinks=True, sliding_window=128,
    layer_types=_gpt_oss_layer_types(24),
    rope_scaling=YarnScaling(factor=32.0, beta_fast=32.0, beta_slow=1.0,
                             original_max_position_embeddings=4096, truncate=False),
    num_experts=32, num_experts_per_tok=4, moe_intermediate_size=2880, intermediate_size=2880,
    router="topk_softmax", router_bias=True, expert_bias=True, activation="clamped_swiglu",
    eos_token_ids=(200002, 199999, 200012),
)

QWEN3_8B = ModelConfig(
    name="qwen3-8b", arch="qwen3", vocab_size=151936, hidden_size=4096, num_layers=36,
    num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
    max_position_embeddings=40960, qk_norm=True, intermediate_size=12288,
    eos_token_ids=(151645, 151643),
)

SMOLLM2_135M = ModelConfig(
    name="smollm2-135m", arch="llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
    num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
    intermediate_size=1536, tie_word_embeddings=True, eos_token_ids=(2,),
)

# Tiny versions of each architecture for tests: same code paths, float32-friendly sizes.
TINY_QWEN3_MOE = QWEN3_30B_A3B.replace(
    name="tiny-qwen3-moe", vocab_size=512, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
    head_dim=16, max_position_embeddings=4096, layer_types=("full",) * 4, num_experts=8,
    num_experts_per_tok=2, moe_intermediate_size=64, intermediate_size=128, eos_token_ids=(),
)

TINY_GPT_OSS = GPT_OSS_20B.replace(
    name="tiny-gpt-oss", vocab_size=512, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
    head_dim=16, max_position_embeddings=4096, sliding_window=32, layer_types=_gpt_oss_layer_types(4),
    rope_scaling=YarnScaling(factor=4.0, beta_fast=32.0, beta_slow=1.0,
                             original_max_position_embeddings=1024, truncate=False),
    num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, intermediate_size=64,
    eos_token_ids=(),
)

TINY_QWEN3 = QWEN3_8B.replace(
    name="tiny-qwen3", vocab_size=512, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
    head_dim=16, max_position_embeddings=4096, layer_types=("full",) * 4, intermediate_size=128,
    eos_token_ids=(),
)

# The tiny Qwen3-MoE with Qwen3-30B-A3B's layer of 128 experts, top-8: expert-traffic studies on
# the CPU, where a routing profile calibrated on that layer gives that layer's coverage.
TINY_QWEN3_MOE_E128 = TINY_QWEN3_MOE.replace(name="tiny-qwen3-moe-e128", num_experts=128, num_experts_per_tok=8)

TINY_LLAMA = SMOLLM2_135M.replace(
    name="tiny-llama", vocab_size=512, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16,
    max_position_embeddings=4096, layer_types=("full",) * 4, intermediate_size=128, eos_token_ids=(),
)

PRESETS: dict[str, ModelConfig] = {c.name: c for c in (
    QWEN3_30B_A3B, GPT_OSS_20B, QWEN3_8B, SMOLLM2_135M, TINY_QWEN3_MOE, TINY_GPT_OSS, TINY_QWEN3, TINY_LLAMA,
    TINY_QWEN3_MOE_E128)}


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`; ValueError listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def expert_bytes(config: ModelConfig, dtype_bytes: int) -> int:
    """Bytes of one expert's weights (what one distinct expert costs in HBM reads)."""
    return config.expert_params() * dtype_bytes


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def even_split(n: int, parts: int) -> list[tuple[int, int]]:
    """Split range(n) into `parts` contiguous (lo, hi) ranges whose sizes differ by at most one."""
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split {n} into {parts} non-empty parts")
    bounds = [math.floor(i * n / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]
