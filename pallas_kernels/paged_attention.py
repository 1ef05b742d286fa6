"""Ragged paged attention for Hopper in Pallas Mosaic GPU (decode and prefill rows in one call).

Contract: exactly `attention_reference.paged_attention_reference` (same arguments, same result
up to bf16 rounding). Writing this call's K/V into the pages is a separate step done before the
call (`executor.run_layers` scatters them into the pools); this kernel only reads pages.

Shapes: T query rows, H query heads, N KV heads, R = H / N heads per KV group, A head dim,
L layers, P pages, Z tokens per page, B sequences, M pages per sequence.

Design
------
* Query tiles. The rows of one sequence are contiguous (`lp_jax.batch`), so each run of equal
  seq_T is cut into tiles of `block_q` tokens. A tile holds the R query heads of one KV head for
  its tokens, stacked as wgmma's M rows (row = token * R + head): a decode row of GPT-OSS/Qwen3
  (R = 8) fills 8 of 64 rows with block_q = 8, and every key byte is read once per
  (sequence, KV head), which is what decode is bound by. Prefill tiles take 128 rows.
  The tile layout (q gathered into [tiles, N, block_q * R, A], outputs gathered back) and the
  per-tile key range are computed outside the kernel with jit-friendly jnp ops (`plan_tiles`).
* Work unit = (tile, KV head). A persistent grid of `num_sms * ctas_per_sm` CTAs walks the units
  longest-first (tiles sorted by their number of key blocks), so one long prefill tile does not
  finish last behind many short decodes.
* Keys stream through SMEM in blocks of `block_kv` tokens = block_kv / Z pages; each page of one
  KV head is a strided [Z, A] TMA box of the pool ([L, P, Z, N, A] indexed at layer, page, :, n,
  :), all pages of a block arrive on one barrier. `stages` blocks are in flight; a slot is
  refilled as soon as its PV wgmma has retired. One warpgroup per CTA does QK^T (wgmma), the
  online softmax in f32 (log2 domain, exp2) and PV (wgmma). P goes to wgmma through SMEM, not
  registers: GPU interpret mode (the CPU tests) only models SMEM A operands, and the tested kernel
  must be the one that runs; the store costs rows x block_kv bf16 per step. `ctas_per_sm` > 1 lets two CTAs
  overlap one's softmax with the other's tensor-core work instead of hand-written warp
  specialisation, which keeps this kernel small. (FA3-style ping-pong warpgroups are the next
  step for prefill if the profile asks for it.)
* Masking uses each row's own position (read per tile), so any row layout works, padding rows
  (pos 0 on the trash page) included. Only key blocks that intersect [min pos - window + 1,
  max pos] of the tile are visited: causal rows skip the future, sliding-window rows skip blocks
  wholly before the window.
* Sinks: the running max starts at the sink logit and the running sum at 1, which is exactly one
  extra logit with no value; without sinks the max starts at MASK (a finite "-inf", so no
  inf - inf), and the first visible key wipes the placeholder (its rescale factor is 0).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.attention_reference import FULL_WINDOW

MASK = -1e30  # masked logit (log2 units): finite so exp2(MASK - MASK) = 1, never NaN
SMEM_BYTES = 227 * 1024  # usable shared memory per SM on Hopper
_ROW = plgpu.Layout.WGMMA.reduce(1)  # a [rows] vector broadcast along an accumulator's columns


@dataclasses.dataclass(frozen=True)
class AttentionTileConfig:
    """Block sizes of one call.

    block_q: query tokens per tile (block_q * R must be 64 or 128: wgmma M of one warpgroup).
    block_kv: keys per pipeline step (a multiple of the page size and of 64).
    stages: key/value blocks in flight per CTA.
    ctas_per_sm: CTAs resident per SM (their SMEM must fit together).
    """
    block_q: int
    block_kv: int = 64
    stages: int = 4
    ctas_per_sm: int = 1

    def smem_bytes(self, R: int, A: int, itemsize: int = 2) -> int:
        """SMEM of one CTA in bytes: the query/output tile, the K and V buffers, probabilities."""
        rows = self.block_q * R
        return ((rows + 2 * self.stages * self.block_kv) * A + rows * self.block_kv) * itemsize

    def validate(self, R: int, A: int, Z: int):
        if self.block_q * R not in (64, 128):
            raise ValueError(f"{self}: block_q * R = {self.block_q * R} must be 64 or 128")
        if self.block_kv % 64 or self.block_kv % Z:
            raise ValueError(f"{self}: block_kv must be a multiple of 64 and of the page size {Z}")
        if self.stages < 1 or self.ctas_per_sm < 1:
            raise ValueError(f"{self}: stages and ctas_per_sm must be >= 1")
        if self.ctas_per_sm * self.smem_bytes(R, A) > SMEM_BYTES:
            raise ValueError(f"{self}: {self.ctas_per_sm} x {self.smem_bytes(R, A)} B exceeds SMEM")


def supports(H: int, N: int, A: int, Z: int) -> bool:
    """Shapes the kernel tiles: A in {64, 128}, R = H / N dividing 128, pages of Z tokens that
    tile a 64-key block in whole SMEM row tiles (Z a multiple of 8 dividing 64)."""
    return A in (64, 128) and H % N == 0 and 128 % (H // N) == 0 and 64 % Z == 0 and Z % 8 == 0


def plan_tiles(seq_T, pos_T, *, num_seqs: int, block_q: int, block_kv: int, window):
    """Query tiles of a ragged batch (jit-friendly; window may be traced).

    Runs of equal seq_T (a sequence's rows, contiguous) are cut into tiles of block_q rows.
    At most min(B, T) runs, so max_tiles = (T + min(B, T) * (block_q - 1)) // block_q is static.
    Returns dict(
      tile_T, slot_T [T] int32: tile of each row and its token slot in the tile;
      qpos [max_tiles, block_q] int32: position of each slot (-1 for empty slots);
      info [max_tiles, 3] int32: (sequence, first key block, end key block) of each tile;
      order [max_tiles] int32: tiles by decreasing number of key blocks (empty tiles last);
      num_tiles [] int32, max_tiles: int).
    """
    T = seq_T.shape[0]
    max_tiles = (T + min(num_seqs, T) * (block_q - 1)) // block_q
    row = jnp.arange(T, dtype=jnp.int32)
    start = jnp.concatenate([jnp.ones((1,), bool), seq_T[1:] != seq_T[:-1]])
    run_T = jnp.cumsum(start.astype(jnp.int32)) - 1
    rank_T = row - lax.cummax(jnp.where(start, row, 0))
    run_tiles = (jnp.bincount(run_T, length=T) + block_q - 1) // block_q
    tile_T = (jnp.cumsum(run_tiles) - run_tiles)[run_T] + rank_T // block_q
    slot_T = rank_T % block_q
    seq = jnp.zeros((max_tiles,), jnp.int32).at[tile_T].set(seq_T, mode="drop")
    hi_pos = jnp.full((max_tiles,), -1, jnp.int32).at[tile_T].max(pos_T, mode="drop")
    lo_pos = jnp.full((max_tiles,), FULL_WINDOW, jnp.int32).at[tile_T].min(pos_T, mode="drop")
    kv_hi = (hi_pos + block_kv) // block_kv  # ceil((max pos + 1) / block_kv); 0 for empty tiles
    kv_lo = jnp.minimum(jnp.maximum(lo_pos - window + 1, 0) // block_kv, kv_hi)
    qpos = jnp.full((max_tiles, block_q), -1, jnp.int32).at[tile_T, slot_T].set(pos_T, mode="drop")
    order = jnp.argsort(kv_lo - kv_hi, stable=True).astype(jnp.int32)
    return dict(tile_T=tile_T, slot_T=slot_T, qpos=qpos, info=jnp.stack([seq, kv_lo, kv_hi], axis=1),
                order=order, num_tiles=jnp.sum(run_tiles).astype(jnp.int32), max_tiles=max_tiles)


def _num_sms() -> int:
    return getattr(jax.devices()[0], "core_count", None) or 132


def _attention_kernel(config: AttentionTileConfig, *, N: int, R: int, A: int, Z: int, M: int,
                      scale: float, dtype, max_tiles: int, num_ctas: int):
    """The plgpu.kernel over (scalars, order, info, table, qpos rows, sink rows, q tiles, pools)."""
    rows, bk, stages = config.block_q * R, config.block_kv, config.stages
    pages_per_block = bk // Z
    qk_scale = scale * math.log2(math.e)

    def body(scalars_ref, order_ref, info_ref, table_ref, qpos_ref, sinks_ref, q_ref, k_ref, v_ref,
             o_ref, q_smem, k_smem, v_smem, p_smem, q_bar, k_bar, v_bar):
        layer, window, num_tiles = scalars_ref[0], scalars_ref[1], scalars_ref[2]

        @plgpu.nd_loop((num_tiles * N,), collective_axes="sm")
        def _unit(info):
            (u,) = info.index
            tile = order_ref[u // N]
            n = u % N
            seq, kv_lo, kv_hi = info_ref[tile, 0], info_ref[tile, 1], info_ref[tile, 2]

            def fetch(j, slot):
                """Issue the TMA loads of key block j (its pages) into `slot`."""
                for i in range(pages_per_block):
                    page = table_ref[seq, jnp.minimum(j * pages_per_block + i, M - 1)]
                    dst = pl.ds(i * Z, Z)
                    plgpu.copy_gmem_to_smem(k_ref.at[layer, page, :, n, :], k_smem.at[slot, dst],
                                            k_bar.at[slot])
                    plgpu.copy_gmem_to_smem(v_ref.at[layer, page, :, n, :], v_smem.at[slot, dst],
                                            v_bar.at[slot])

            # The previous unit's output store must have read q_smem before it is reused.
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            plgpu.copy_gmem_to_smem(q_ref.at[tile, n], q_smem, q_bar)
            for s in range(stages):
                pl.when(kv_lo + s < kv_hi)(functools.partial(fetch, kv_lo + s, s))
            qpos = plgpu.load(qpos_ref.at[tile], layout=_ROW, optimized=False)
            m0 = plgpu.load(sinks_ref.at[n], layout=_ROW, optimized=False)
            plgpu.barrier_wait(q_bar)

            def step(j, carry):
                m, l, o = carry
                slot = lax.rem(j - kv_lo, stages)
                plgpu.barrier_wait(k_bar.at[slot])

                def qk(acc):
                    plgpu.wgmma(acc, q_smem, k_smem.at[slot].transpose((1, 0)))
                    return acc[...]
                s = pl.run_scoped(qk, plgpu.ACC((rows, bk), jnp.float32)) * qk_scale
                kpos = plgpu.broadcasted_iota(jnp.int32, (rows, bk), 1, layout=plgpu.Layout.WGMMA) + j * bk
                d = lax.broadcast_in_dim(qpos, (rows, bk), [0]) - kpos
                s = jnp.where((d >= 0) & (d < window), s, MASK)
                m_new = jnp.maximum(m, s.max(axis=1))
                alpha = jnp.exp2(m - m_new)
                p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
                l = l * alpha + p.sum(axis=1)
                plgpu.barrier_wait(v_bar.at[slot])

                p_smem[...] = p.astype(dtype)
                plgpu.commit_smem()  # make the store visible to wgmma's async proxy

                def pv(acc):
                    plgpu.wgmma(acc, p_smem, v_smem.at[slot])
                    return acc[...]  # waits for the wgmma: the slot's K and V are read
                o = o * lax.broadcast_in_dim(alpha, o.shape, [0]) + pl.run_scoped(
                    pv, plgpu.ACC((rows, A), jnp.float32))
                pl.when(j + stages < kv_hi)(functools.partial(fetch, j + stages, slot))
                return m_new, l, o

            l0 = plgpu.layout_cast(jnp.full((rows,), 1.0, jnp.float32), _ROW)
            o0 = plgpu.layout_cast(jnp.zeros((rows, A), jnp.float32), plgpu.Layout.WGMMA)
            _, l, o = lax.fori_loop(kv_lo, kv_hi, step, (m0, l0, o0))
            q_smem[...] = (o / lax.broadcast_in_dim(l, o.shape, [0])).astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(q_smem, o_ref.at[tile, n])

        plgpu.wait_smem_to_gmem(0)

    transforms = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    return plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((max_tiles, N, rows, A), dtype),
        scratch_types=[
            plgpu.SMEM((rows, A), dtype, transforms=transforms),
            plgpu.SMEM((stages, bk, A), dtype, transforms=transforms),
            plgpu.SMEM((stages, bk, A), dtype, transforms=transforms),
            plgpu.SMEM((rows, bk), dtype, transforms=transforms),
            plgpu.Barrier(),
            plgpu.Barrier(num_arrivals=pages_per_block, num_barriers=stages),
            plgpu.Barrier(num_arrivals=pages_per_block, num_barriers=stages),
        ],
        grid=(num_ctas,),
        grid_names=("sm",),
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )


def paged_attention(q_THA, k_pool_LPZNA, v_pool_LPZNA, layer, block_table_BM, seq_T, pos_T, *,
                    window=FULL_WINDOW, sinks_H=None, scale=None, config: AttentionTileConfig | None = None,
                    num_sms: int | None = None):
    """`paged_attention_reference` on the Pallas kernel. Returns [T, H, A] in q's dtype.

    q [T, H, A] bf16/f16; pools [L, P, Z, N, A] of q's dtype, already holding this call's K/V;
    layer, window: int or traced int32 scalar; block_table_BM [B, M] int32; seq_T, pos_T [T]
    int32; sinks_H [H] or None; config from `attention_tuning.lookup` when None; num_sms: the
    persistent grid's SM count (device core count, else 132).
    """
    from pallas_kernels.attention_tuning import lookup  # the table imports this module's config

    T, H, A = q_THA.shape
    _, _, Z, N, _ = k_pool_LPZNA.shape
    B, M = block_table_BM.shape
    R = H // N
    dtype = q_THA.dtype
    cfg = config or lookup(H, N, A, T, B, jax.devices()[0].device_kind)
    cfg.validate(R, A, Z)
    scale = A ** -0.5 if scale is None else scale
    window = jnp.asarray(window, jnp.int32)
    plan = plan_tiles(seq_T.astype(jnp.int32), pos_T.astype(jnp.int32), num_seqs=B,
                      block_q=cfg.block_q, block_kv=cfg.block_kv, window=window)
    nt, bq = plan["max_tiles"], cfg.block_q

    q_tiles = (jnp.zeros((nt, bq, N, R, A), dtype)
               .at[plan["tile_T"], plan["slot_T"]].set(q_THA.reshape(T, N, R, A), mode="drop")
               .transpose(0, 2, 1, 3, 4).reshape(nt, N, bq * R, A))
    qpos_rows = jnp.repeat(plan["qpos"], R, axis=1)  # row = token * R + head
    if sinks_H is None:
        sinks_rows = jnp.full((N, bq * R), MASK, jnp.float32)
    else:
        sinks_rows = jnp.tile(sinks_H.astype(jnp.float32).reshape(N, R) * math.log2(math.e), (1, bq))
    scalars = jnp.stack([jnp.asarray(layer, jnp.int32), window, plan["num_tiles"]])

    kernel = _attention_kernel(cfg, N=N, R=R, A=A, Z=Z, M=M, scale=scale, dtype=dtype, max_tiles=nt,
                               num_ctas=(num_sms or _num_sms()) * cfg.ctas_per_sm)
    o_tiles = kernel(scalars, plan["order"], plan["info"], block_table_BM.astype(jnp.int32), qpos_rows,
                     sinks_rows, q_tiles, k_pool_LPZNA, v_pool_LPZNA)
    out = o_tiles.reshape(nt, N, bq, R, A)[plan["tile_T"], :, plan["slot_T"]]  # [T, N, R, A]
    return out.reshape(T, H, A)
