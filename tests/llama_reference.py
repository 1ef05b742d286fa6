"""An independent float64 numpy forward of a GGUF Llama, written from llama.cpp's conventions:
it reads the tensors as the file stores them (attn_q / attn_k rows in llama.cpp's order, every
matrix [out, in]) and rotates adjacent pairs (x[2i], x[2i+1]) as llama.cpp's RoPE does. So it
shares no layout code with lp_jax.checkpoint.gguf: agreement checks the un-permutation, the
transposes and the RoPE convention together.
"""

from __future__ import annotations

import numpy as np
from gguf import quants


class LlamaReference:
    def __init__(self, reader):
        self.meta = {k: f.contents() for k, f in reader.fields.items()
                     if k.startswith("llama.") and not k.startswith("llama.vocab")}
        self.w = {t.name: t for t in reader.tensors}
        self.L = self.meta["llama.block_count"]
        self.H = self.meta["llama.attention.head_count"]
        self.N = self.meta["llama.attention.head_count_kv"]
        self.eps = float(self.meta["llama.attention.layer_norm_rms_epsilon"])
        self.base = float(self.meta["llama.rope.freq_base"])
        self._cache: dict[str, np.ndarray] = {}

    def t(self, name: str) -> np.ndarray:
        if name not in self._cache:
            t = self.w[name]
            self._cache[name] = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float64)
        return self._cache[name]

    def norm(self, x, name):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * self.t(name)

    def rope_pairs(self, x_THA):
        T, _, A = x_THA.shape
        theta = self.base ** (-np.arange(0, A, 2, dtype=np.float64) / A)
        ang = np.arange(T, dtype=np.float64)[:, None] * theta[None, :]  # [T, A/2]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        even, odd = x_THA[..., 0::2], x_THA[..., 1::2]
        out = np.empty_like(x_THA)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def logits(self, tokens) -> np.ndarray:
        """Logits [T, V] float64 of one whole sequence (causal attention, positions 0..T-1)."""
        x = self.t("token_embd.weight")[np.asarray(tokens)]
        T = x.shape[0]
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for i in range(self.L):
            p = f"blk.{i}."
            h = self.norm(x, p + "attn_norm.weight")
            q = (h @ self.t(p + "attn_q.weight").T).reshape(T, self.H, -1)
            k = (h @ self.t(p + "attn_k.weight").T).reshape(T, self.N, -1)
            v = (h @ self.t(p + "attn_v.weight").T).reshape(T, self.N, -1)
            q, k = self.rope_pairs(q), self.rope_pairs(k)
            A = q.shape[-1]
            out = np.empty_like(q)
            for head in range(self.H):
                kv = head // (self.H // self.N)  # ggml broadcasts kv head = q head / (H / N)
                s = q[:, head] @ k[:, kv].T / np.sqrt(A) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                out[:, head] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
            x = x + out.reshape(T, -1) @ self.t(p + "attn_output.weight").T
            h = self.norm(x, p + "ffn_norm.weight")
            g, u = h @ self.t(p + "ffn_gate.weight").T, h @ self.t(p + "ffn_up.weight").T
            x = x + (g / (1 + np.exp(-g)) * u) @ self.t(p + "ffn_down.weight").T
        head = self.t("output.weight") if "output.weight" in self.w else self.t("token_embd.weight")
        return self.norm(x, "output_norm.weight") @ head.T
