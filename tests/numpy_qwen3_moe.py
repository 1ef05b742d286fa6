"""An independent float64 numpy Qwen3-MoE forward, written from transformers' conventions and reading
a checkpoint's tensors by their transformers names (no lp-jax code): the oracle for the committed
demo model (tests/test_tiny_moe.py), itself checked against transformers' own logits.

Conventions: torch Linear y = x @ W.T; RoPE rotates halves (rotate_half); q/k RMS norms per head
before RoPE; grouped-query attention, query head h reading key/value head h // (H / N); router
softmax over all experts, top-k, weights renormalised when norm_topk_prob; SwiGLU experts.
"""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load_file


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def qwen3_moe_logits(hf: dict, tensors: dict[str, np.ndarray], tokens) -> tuple[np.ndarray, float]:
    """(logits [T, V] float64, the smallest gap between the k-th and (k+1)-th router probability
    over every token and layer: how far the reference is from a routing tie)."""
    w = {name: t.astype(np.float64) for name, t in tensors.items()}
    D, H, N = hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"]
    A = hf.get("head_dim") or D // H
    eps, K = hf["rms_norm_eps"], hf["num_experts_per_tok"]
    E = hf.get("num_experts") or hf["num_local_experts"]
    theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
    tokens = np.asarray(tokens)
    T = len(tokens)
    angles = np.arange(T)[:, None] * (1.0 / theta ** (np.arange(0, A, 2) / A))[None, :]
    cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))

    def rope(x):  # [T, heads, A]
        rotated = np.concatenate([-x[..., A // 2:], x[..., :A // 2]], -1)
        return x * cos[:, None] + rotated * sin[:, None]

    x = w["model.embed_tokens.weight"][tokens]
    causal = np.tril(np.ones((T, T), bool))
    margin = np.inf
    for i in range(hf["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, A)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, N, A)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, N, A)
        q = rope(_rms(q, w[p + "self_attn.q_norm.weight"], eps))
        k = np.repeat(rope(_rms(k, w[p + "self_attn.k_norm.weight"], eps)), H // N, axis=1)
        v = np.repeat(v, H // N, axis=1)
        scores = np.einsum("tha,sha->hts", q, k) / np.sqrt(A)
        probs = _softmax(np.where(causal[None], scores, -np.inf))
        o = np.einsum("hts,sha->tha", probs, v).reshape(T, H * A)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        router = _softmax(h @ w[p + "mlp.gate.weight"].T)  # [T, E]
        order = np.argsort(-router, axis=-1, kind="stable")
        ranked = np.take_along_axis(router, order, -1)
        if K < E:
            margin = min(margin, float((ranked[:, K - 1] - ranked[:, K]).min()))
        top, weights = order[:, :K], ranked[:, :K]
        if hf.get("norm_topk_prob", False):
            weights = weights / weights.sum(-1, keepdims=True)
        y = np.zeros_like(x)
        for t in range(T):
            for j in range(K):
                e = f"{p}mlp.experts.{top[t, j]}."
                gate, up = h[t] @ w[e + "gate_proj.weight"].T, h[t] @ w[e + "up_proj.weight"].T
                act = gate / (1.0 + np.exp(-gate)) * up
                y[t] += weights[t, j] * (act @ w[e + "down_proj.weight"].T)
        x = x + y
    x = _rms(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if hf.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T, margin


def load_tensors(folder) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))
