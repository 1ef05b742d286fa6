"""Pure-jnp attention: the oracle for the paged-attention kernel and the path used off Hopper.

Shapes: T query rows, S keys, H query heads, N key/value heads (H = N * R), A head dim,
P pages, Z page size (tokens per page), M pages per sequence, B sequences.
Masks follow transformers: a query at position p sees keys at positions k with k <= p and,
on sliding-window layers, p - k < window. Softmax is computed in f32; GPT-OSS's learned sinks
add one logit per head that takes probability mass but contributes no value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FULL_WINDOW = 1 << 30  # "no sliding window", usable as a traced int32


def visible(q_pos, k_pos, window):
    """Mask [..., Tq, Tk]: key visible to query (causal, within the window)."""
    d = q_pos[..., :, None] - k_pos[..., None, :]
    return (d >= 0) & (d < window)


def _softmax_with_sinks(scores, mask, sinks_H):
    """scores [T, N, R, S] f32, mask broadcastable to it; returns probabilities over S."""
    scores = jnp.where(mask, scores, -jnp.inf)
    m = jnp.max(scores, axis=-1, keepdims=True)
    if sinks_H is not None:
        T, N, R, _ = scores.shape
        sink = sinks_H.astype(jnp.float32).reshape(1, N, R, 1)
        m = jnp.maximum(m, sink)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(scores - m)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    if sinks_H is not None:
        denom = denom + jnp.exp(sink - m)
    return e / jnp.where(denom > 0, denom, 1.0)


def dense_attention(q_THA, k_SNA, v_SNA, q_pos_T, k_pos_S, *, window=FULL_WINDOW, sinks_H=None,
                    scale=None):
    """One sequence: every query row against the same keys. Returns [T, H, A] in q's dtype."""
    T, H, A = q_THA.shape
    N = k_SNA.shape[1]
    scale = A ** -0.5 if scale is None else scale
    q = q_THA.reshape(T, N, H // N, A).astype(jnp.float32)
    scores = jnp.einsum("tnra,sna->tnrs", q, k_SNA.astype(jnp.float32)) * scale
    mask = visible(q_pos_T, k_pos_S, window)[:, None, None, :]
    p = _softmax_with_sinks(scores, mask, sinks_H)
    o = jnp.einsum("tnrs,sna->tnra", p, v_SNA.astype(jnp.float32))
    return o.reshape(T, H, A).astype(q_THA.dtype)


def paged_attention_reference(q_THA, k_pool_LPZNA, v_pool_LPZNA, layer, block_table_BM, seq_T, pos_T, *,
                              window=FULL_WINDOW, sinks_H=None, scale=None, rows_per_block=256):
    """Ragged batch over paged K/V: row t belongs to sequence seq_T[t] and sits at pos_T[t].

    The pools hold every layer ([L, P, Z, N, A]); `layer` (traced int) selects one inside the
    gather, so no copy of a layer's pool is made.

    The sequence's keys are its pages block_table[seq] in order (slot j of the M*Z holds the key
    at position j). The row sees positions <= its own (its prompt causally, its paged prefix,
    or its decode history alike), so the K/V of this step must be written to the pages first.
    Rows are processed in blocks of `rows_per_block` to bound memory. Returns [T, H, A].
    """
    T, H, A = q_THA.shape
    _, _, Z, N, _ = k_pool_LPZNA.shape
    M = block_table_BM.shape[1]
    scale = A ** -0.5 if scale is None else scale
    k_pos = jnp.arange(M * Z, dtype=jnp.int32)

    def one_block(args):
        q, seq, pos = args
        pages = block_table_BM[seq]  # [t, M]
        k = k_pool_LPZNA[layer, pages].reshape(q.shape[0], M * Z, N, A).astype(jnp.float32)
        v = v_pool_LPZNA[layer, pages].reshape(q.shape[0], M * Z, N, A).astype(jnp.float32)
        qg = q.reshape(q.shape[0], N, H // N, A).astype(jnp.float32)
        scores = jnp.einsum("tnra,tsna->tnrs", qg, k) * scale
        mask = visible(pos[:, None], k_pos[None, :], window)[:, 0][:, None, None, :]
        p = _softmax_with_sinks(scores, mask, sinks_H)
        o = jnp.einsum("tnrs,tsna->tnra", p, v)
        return o.reshape(q.shape[0], H, A).astype(q_THA.dtype)

    if T <= rows_per_block:
        return one_block((q_THA, seq_T, pos_T))
    pad = (-T) % rows_per_block
    nb = (T + pad) // rows_per_block
    padded = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in (q_THA, seq_T, pos_T)]
    blocks = [a.reshape(nb, rows_per_block, *a.shape[1:]) for a in padded]
    out = jax.lax.map(one_block, tuple(blocks))
    return out.reshape(nb * rows_per_block, H, A)[:T]
