"""Ragged paged attention for Hopper in Pallas Mosaic GPU (decode and prefill rows in one call).

Contract: exactly `attention_reference.paged_attention_reference` (same arguments, same result
up to bf16 rounding). Writing this call's K/V into the pages is a separate step done before the
call (`executor.run_layers` scatters them into the pools); this kernel only reads pages.

Shapes: T query rows, H query heads, N KV heads, R = H / N heads per KV group, A head dim,
L layers, P pages, Z tokens per page, B sequences, M pages per sequence.

Design
------
* Query tiles. The rows of one sequence are contiguous (`lp_jax.engine.batch`), so each run of equal
  seq_T is cut into tiles of `block_q` tokens. A tile holds the R query heads of one KV head for
  its tokens, stacked as wgmma's M rows (row = token * R + head): a decode row of GPT-OSS/Qwen3
  (R = 8) fills 8 of 64 rows with block_q = 8, and every key byte is read once per
  (sequence, KV head), which is what decode is bound by. Prefill tiles take 128 rows: two compute
  warpgroups of 64 rows share the tile's key stream, as FlashAttention-3's 128-row CTA tile does.
  The tiles (their rows, positions, key ranges) are planned outside the kernel with jit-friendly
  jnp ops (`batch_plan`), once per batch: the executor shares one plan among all layers of a call.
* q and o in place. A tile's tokens are contiguous rows of q [T, H, A], and with R a multiple of 8
  each token's R heads are whole 8-row SMEM tiles: the kernel reads them by one [R, A] TMA box
  per token and writes the outputs back the same way, only for the tile's own rows (a tile that
  ends inside a sequence leaves the next tile's rows alone). The layer's window index and sinks
  are read inside the kernel at the traced layer, so a layer's attention is one launch. (Other R
  go through tile-layout gathers: q into [tiles, N, block_q * R, A] and the outputs back. The
  H100 sessions measured what the wrapper's small XLA kernels and their launch gaps cost: ~0.45 ms
  of a 1.39 ms 8K prefill, ~0.09 ms of a 0.29 ms decode at 64 x 4K.)
* Work unit = (tile, KV head, key split). A persistent grid of `num_sms * ctas_per_sm` CTAs walks
  the units longest-first (tiles sorted by their number of key blocks), so one long prefill tile
  does not finish last behind many short decodes. When tiles x KV heads are fewer than the CTAs
  (small decode batches), each unit's key range is split in `kv_splits` parts whose normalised
  outputs and log-sum-exps (written in place per split) are merged after the kernel by one XLA
  fusion (flash-decoding); the sink counts in split 0 only.
* Warp specialisation (`paged_attention_kernel`): one producer warpgroup streams each key block
  of `block_kv` tokens = block_kv / Z pages, each page of one KV head a strided [Z, A] TMA box of
  the pool ([L, P, Z, N, A] at layer, page, :, n, :), into a ring of `stages` slots, running ahead
  across units; a slot's K is released when the QK wgmmas have read it and its V after PV. Each
  compute warpgroup does QK^T (wgmma), the online softmax in f32 (log2 domain, exp2) and PV
  (wgmma) with P as the register A operand; two compute warpgroups alternate on the tensor cores
  (a ping-pong barrier) so one's softmax hides under the other's matmuls. `p_via_smem` stages P
  in SMEM instead: GPU interpret mode (the CPU tests) only models SMEM A operands, so the CPU
  tests run that switch of the same body and the GPU tests run the register path.
* Masking uses each row's own position (read per tile), so any row layout works, padding rows
  (pos 0 on the trash page) included. Only key blocks that intersect [min pos - window + 1,
  max pos] of the tile are visited: causal rows skip the future, sliding-window rows skip blocks
  wholly before the window. Only blocks that cross some row's causal or window edge are masked
  (per tile, [first, end) unmasked blocks come with the plan): a prefill tile of 16 tokens masks
  one 128-key block.
* Sinks: the running max starts at the sink logit and the running sum at 1, which is exactly one
  extra logit with no value; without sinks (and in splits > 0) the max starts at MASK (a finite
  "-inf", so no inf - inf), and the first visible key wipes the placeholder (its rescale factor
  is 0); a split that sees no key of a row gets a log-sum-exp of about MASK, weight 0.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.attention_reference import FULL_WINDOW
from pallas_kernels.paged_attention_kernel import MASK, AttentionTileConfig, attention_kernel

MAX_SPLITS = 16  # key-range splits of one unit when kv_splits is automatic

def supports(H: int, N: int, A: int, Z: int) -> bool:
    """Shapes the kernel tiles: A in {64, 128}, R = H / N dividing 128, pages of Z tokens that
    tile a 64-key block in whole SMEM row tiles (Z a multiple of 8 dividing 64)."""
    return A in (64, 128) and H % N == 0 and 128 % (H // N) == 0 and 64 % Z == 0 and Z % 8 == 0


def tile_rows(seq_T, pos_T, *, num_seqs: int, block_q: int) -> dict:
    """Query tiles of a ragged batch (jit-friendly), the window-independent part of a plan.

    Runs of equal seq_T (a sequence's rows, contiguous) are cut into tiles of block_q rows,
    numbered in row order. At most min(B, T) runs, so max_tiles = (T + min(B, T) * (block_q - 1))
    // block_q is static. Built from prefix scans, one all-pairs count and gathers: no scatters
    (XLA runs a scatter of q-sized rows several times slower than a gather).
    Returns dict(
      tile_T, slot_T [T] int32: tile of each row and its token slot in the tile;
      tile_row [max_tiles, block_q] int32: the row in each slot (a valid row index, any row for
        empty slots);
      qpos [max_tiles, block_q] int32: position of each slot (-1 for empty slots);
      seq [max_tiles] int32: each tile's sequence;
      span [max_tiles, 2] int32: each tile's first row and number of rows (its rows are
        contiguous: the kernel reads q and writes o there in place);
      num_tiles [] int32, max_tiles: int).
    """
    T = seq_T.shape[0]
    max_tiles = (T + min(num_seqs, T) * (block_q - 1)) // block_q
    row = jnp.arange(T, dtype=jnp.int32)
    start = jnp.concatenate([jnp.ones((1,), bool), seq_T[1:] != seq_T[:-1]])
    rank_T = row - lax.cummax(jnp.where(start, row, 0))  # row's rank within its run
    slot_T = rank_T % block_q
    tile_T = jnp.cumsum((slot_T == 0).astype(jnp.int32)) - 1
    tile = jnp.arange(max_tiles, dtype=jnp.int32)
    first = jnp.sum((tile_T[None, :] < tile[:, None]).astype(jnp.int32), axis=1)  # tile's first row
    tile_row = jnp.minimum(first[:, None] + jnp.arange(block_q, dtype=jnp.int32), T - 1)
    valid = (first[:, None] + jnp.arange(block_q) < T) & (tile_T[tile_row] == tile[:, None])
    qpos = jnp.where(valid, pos_T[tile_row], -1)
    span = jnp.stack([jnp.minimum(first, T - 1), jnp.sum(valid, axis=1, dtype=jnp.int32)], axis=1)
    return dict(tile_T=tile_T, slot_T=slot_T, tile_row=tile_row, qpos=qpos, seq=seq_T[tile_row[:, 0]],
                span=span.astype(jnp.int32), num_tiles=tile_T[-1] + 1, max_tiles=max_tiles)


def key_ranges(rows: dict, *, block_kv: int, window) -> dict:
    """The window-dependent part of a plan, for the tiles of `tile_rows` (window may be traced):
    info [max_tiles, 5] int32 per tile: sequence, first and end key block, first and end
      unmasked block (every key of [first, end) is visible to every row of the tile);
    order [max_tiles] int32: tiles by decreasing number of key blocks (empty tiles last)."""
    qpos = rows["qpos"]
    hi_pos = qpos.max(axis=1)
    lo_pos = jnp.where(qpos >= 0, qpos, FULL_WINDOW).min(axis=1)
    kv_hi = (hi_pos + block_kv) // block_kv  # ceil((max pos + 1) / block_kv); 0 for empty tiles
    kv_lo = jnp.minimum(jnp.maximum(lo_pos - window + 1, 0) // block_kv, kv_hi)
    full_lo = (hi_pos - window + block_kv) // block_kv  # keys >= max pos - window + 1
    full_hi = (lo_pos + 1) // block_kv  # keys <= min pos
    order = jnp.argsort(kv_lo - kv_hi, stable=True).astype(jnp.int32)
    info = jnp.stack([rows["seq"], kv_lo, kv_hi, full_lo, full_hi], axis=1)
    return dict(info=info, order=order)


def tile_config(H: int, N: int, A: int, T: int, B: int, config: AttentionTileConfig | None = None
                ) -> AttentionTileConfig:
    """`config`, or the tuned one for this shape on this device (with P through SMEM off a GPU,
    i.e. in GPU interpret mode)."""
    from pallas_kernels.attention_tuning import lookup  # the table imports this module's config

    if config is not None:
        return config
    device = jax.devices()[0]
    cfg = lookup(H, N, A, T, B, device.device_kind)
    return dataclasses.replace(cfg, p_via_smem=True) if device.platform != "gpu" else cfg


def batch_plan(seq_T, pos_T, *, H: int, N: int, A: int, num_seqs: int, windows,
               config: AttentionTileConfig | None = None) -> dict:
    """The tile plan of one batch for each window in `windows` (ints or traced int32 scalars),
    to share among the layers of a call instead of planning in every layer: `tile_rows` once and
    `key_ranges` per window, stacked (info [W, max_tiles, 5], order [W, max_tiles], windows
    [W]), and each slot's position repeated per query head of a KV head (qpos_rows [max_tiles,
    block_q * H / N]). Pass it to `paged_attention` with the layer's index into `windows`."""
    cfg = tile_config(H, N, A, seq_T.shape[0], num_seqs, config)
    rows = tile_rows(seq_T.astype(jnp.int32), pos_T.astype(jnp.int32), num_seqs=num_seqs, block_q=cfg.block_q)
    ranges = [key_ranges(rows, block_kv=cfg.block_kv, window=jnp.asarray(w, jnp.int32)) for w in windows]
    return dict(rows, info=jnp.stack([r["info"] for r in ranges]), order=jnp.stack([r["order"] for r in ranges]),
                windows=jnp.stack([jnp.asarray(w, jnp.int32) for w in windows]),
                qpos_rows=jnp.repeat(rows["qpos"], H // N, axis=1),  # row = token * R + head
                block_q=cfg.block_q, block_kv=cfg.block_kv)


def _num_sms() -> int:
    """The device's SM count (132 if it does not say); 4 off a GPU, where GPU interpret mode runs
    the CTAs one after another on the CPU (the result does not depend on the grid)."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return 4
    return getattr(device, "core_count", None) or 132


def num_splits(cfg: AttentionTileConfig, max_tiles: int, N: int, num_ctas: int) -> int:
    """Key splits per unit: cfg.kv_splits, or when 0 as many as bring the units up to the CTAs."""
    return cfg.kv_splits or max(1, min(MAX_SPLITS, num_ctas // (max_tiles * N)))


def in_place(R: int) -> bool:
    """Whether the kernel reads q and writes o in place ([T, H, A]): each token's R heads must be
    whole 8-row SMEM tiles. Other group sizes go through tile-layout gathers."""
    return R % 8 == 0


def sink_rows(sinks_H, *, N: int, R: int, block_q: int, splits: int):
    """Sink logits per tile row (row = token * R + head), log2 units, MASK in splits > 0 (the sink
    counts once): [S, N, block_q * R] from sinks [H], or [L, S, N, block_q * R] from a layer stack
    [L, H]."""
    lead = sinks_H.shape[:-1]
    rows = jnp.tile(sinks_H.astype(jnp.float32).reshape(*lead, N, R) * math.log2(math.e), (1,) * len(lead) + (1, block_q))
    rest = jnp.full((*lead, splits - 1, N, block_q * R), MASK, jnp.float32)
    return jnp.concatenate([rows[..., None, :, :], rest], axis=-3)


def paged_attention(q_THA, k_pool_LPZNA, v_pool_LPZNA, layer, block_table_BM, seq_T, pos_T, *,
                    window=FULL_WINDOW, sinks_H=None, scale=None, config: AttentionTileConfig | None = None,
                    num_sms: int | None = None, plan: dict | None = None, window_index=0):
    """`paged_attention_reference` on the Pallas kernel. Returns [T, H, A] in q's dtype.

    q [T, H, A] bf16/f16; pools [L, P, Z, N, A] of q's dtype, already holding this call's K/V;
    layer, window: int or traced int32 scalar; block_table_BM [B, M] int32; seq_T, pos_T [T]
    int32; sinks_H [H], or the layer stack [L, H] (read at `layer` inside the kernel), or None;
    config from `tile_config` when None; num_sms: the persistent grid's SM count (device core
    count, else 132). plan: `batch_plan` of this batch (made with the same config), shared by the
    layers of a call; the layer's window is then plan["windows"][window_index], where
    window_index is an int or traced int32 scalar, or an [L] int32 array of every layer's index
    (read at `layer` inside the kernel), and `window` is not read. Without a plan, the plan is made
    here for `window`.

    With a plan, no sinks or stacked sinks, and one key split, the call is the kernel alone when
    H / N is a multiple of 8 (q and o in place): no XLA work per layer.
    """
    T, H, A = q_THA.shape
    _, _, Z, N, _ = k_pool_LPZNA.shape
    B, M = block_table_BM.shape
    R = H // N
    dtype = q_THA.dtype
    cfg = tile_config(H, N, A, T, B, config)
    cfg.validate(R, A, Z)
    scale = A ** -0.5 if scale is None else scale
    if plan is None:
        plan, window_index = batch_plan(seq_T, pos_T, H=H, N=N, A=A, num_seqs=B, windows=(window,), config=cfg), 0
    elif (plan["block_q"], plan["block_kv"]) != (cfg.block_q, cfg.block_kv):
        raise ValueError(f"plan made for blocks ({plan['block_q']}, {plan['block_kv']}), the call tiles "
                         f"({cfg.block_q}, {cfg.block_kv}): make it with the same config")
    window_index = jnp.asarray(window_index, jnp.int32)
    window_per_layer = window_index.ndim == 1
    nt, bq = plan["max_tiles"], cfg.block_q
    num_ctas = (num_sms or _num_sms()) * cfg.ctas_per_sm
    splits = num_splits(cfg, nt, N, num_ctas)
    direct = in_place(R)

    sinks = () if sinks_H is None else (sink_rows(sinks_H, N=N, R=R, block_q=bq, splits=splits),)
    if sinks_H is not None and sinks_H.ndim == 1:
        sinks = (sinks[0][None],)
    q = q_THA if direct else q_THA.reshape(T, N, R, A)[plan["tile_row"]].transpose(0, 2, 1, 3, 4).reshape(
        nt, N, bq * R, A)
    kernel = attention_kernel(cfg, N=N, R=R, A=A, Z=Z, M=M, scale=scale, dtype=dtype, max_tiles=nt,
                              num_ctas=num_ctas, splits=splits, T=T, in_place=direct,
                              sinks_per_layer=None if sinks_H is None else sinks_H.ndim == 2,
                              window_per_layer=window_per_layer)
    o, *lse = kernel(jnp.asarray(layer, jnp.int32).reshape(1), plan["num_tiles"].reshape(1).astype(jnp.int32),
                     window_index.reshape(-1), plan["windows"], plan["order"], plan["info"], plan["span"],
                     block_table_BM.astype(jnp.int32), plan["qpos_rows"], *sinks, q, k_pool_LPZNA, v_pool_LPZNA)
    if not direct:  # rows back in call order, per split: [S, T, N, R(, A)]. (Indexing all splits at
        # once, or moving the token axis first, made XLA's gather 3x slower on the H100: 0.19 vs 0.06 ms.)
        def rows(x):  # [S, nt, N, bq * R, ...] -> [S, T, H, ...]
            x = x.reshape(splits, nt, N, bq, R, *x.shape[4:])
            return jnp.stack([xs[plan["tile_T"], :, plan["slot_T"]] for xs in x]).reshape(splits, T, H, *x.shape[5:])
        o, lse = rows(o), [rows(x) for x in lse]
    elif splits == 1:
        return o
    if splits == 1:
        return o[0]
    # Merge the splits by their log-sum-exps (log2 units).
    w = jnp.exp2(lse[0] - lse[0].max(axis=0))
    out = jnp.einsum("sth,stha->tha", w, o.astype(jnp.float32)) / w.sum(axis=0)[..., None]
    return out.astype(dtype)
