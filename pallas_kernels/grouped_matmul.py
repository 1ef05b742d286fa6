"""Grouped (per-expert) matmul for Hopper in Pallas Mosaic GPU, with a fused MoE epilogue.

Rows arrive in a *tile-padded* layout (see `plan_tiles`): the rows of each expert are contiguous
and start on a multiple of `block_m`, so every row tile belongs to exactly one expert and loads
and stores are whole TMA tiles. Per-tile metadata is computed outside the kernel:

    tile_expert [max_tiles] int32   expert of row tile i (only the first num_tiles are used)
    num_tiles   [1] int32           number of row tiles that hold at least one real row

The kernel runs a persistent grid (one CTA per SM) over the num_tiles x (N / block_n) work units,
so an expert without rows owns no tile and none of its weight bytes are read. Each CTA is
warp-specialised: one warpgroup issues the TMA loads, `num_compute_wgs` warpgroups issue wgmma and
run the epilogue (optional bias per expert and column, optional gated activation of two
products, optional per-row scale).

Two orientations:
  * `swap=False` (prefill): tokens on wgmma's M (block_m a multiple of 64 per compute warpgroup),
    x is [M, K], out is [M, N].
  * `swap=True` (decode): tokens on wgmma's N (block_m a multiple of 8), the weight tile is the
    transposed A operand; out is written transposed, [N, M]. x is [M, K], or [K, M] when
    `x_transposed` (the transposed output of a previous swap=True call). A decode-sized expert
    then pads its rows to 16 or 32 instead of 64 and the weights stream once per expert.

With `shared_rows` (the decode-size layer, `moe_decode.py`), every row tile reads the same block_m
rows of x (all the tokens of the call) and tile i writes output rows [i * block_m, (i + 1) *
block_m): each active expert computes every token, so no row layout and no gather are needed.

Shapes: M padded rows, K contraction, N output columns, E experts. bf16 in, f32 accumulate.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.activations import apply_activation

_ROW = plgpu.Layout.WGMMA.reduce(1)  # a [rows] vector broadcast along the columns of an acc
_COL = plgpu.Layout.WGMMA.reduce(0)  # a [cols] vector broadcast along the rows of an acc


@dataclasses.dataclass(frozen=True)
class TileConfig:
    """Block sizes of one grouped-matmul call.

    block_m: token rows per tile (= the padding granularity of the row layout).
    block_n: weight columns per tile.
    block_k: contraction step of the TMA/wgmma pipeline.
    stages: pipeline depth (SMEM buffers per operand).
    num_compute_wgs: compute warpgroups; with swap=False they split block_m, with swap=True
      they split block_n (each needs a multiple of 64 on wgmma's M).
    swap: tokens on wgmma's N dimension (decode path).
    """
    block_m: int
    block_n: int
    block_k: int = 64
    stages: int = 4
    num_compute_wgs: int = 2
    swap: bool = False

    def smem_bytes(self, num_weights: int) -> int:
        """Shared memory of the pipeline buffers and the output tile (bf16), in bytes."""
        step = (self.block_m * self.block_k + num_weights * self.block_k * self.block_n) * 2
        return self.stages * step + self.block_m * self.block_n * 2

    def validate(self, K: int, N: int):
        wg_m = (self.block_n if self.swap else self.block_m) // self.num_compute_wgs
        if wg_m % 64 or wg_m == 0:
            raise ValueError(f"{self}: wgmma M per warpgroup must be a multiple of 64")
        if self.swap and self.block_m % 8:
            raise ValueError(f"{self}: token tile on wgmma N must be a multiple of 8")
        if K % self.block_k or N % self.block_n:
            raise ValueError(f"{self}: K={K}, N={N} must be multiples of block_k, block_n")


# Up to this many assignments, the plan is built from compare matrices ([A, A], [A, E],
# [M_pad, A]) instead of a sort and scatters: a handful of fused XLA kernels instead of ~15, which
# is what decode-sized layers pay for (each kernel launch costs a few microseconds).
SMALL_PLAN_MAX_ROWS = 1024


def plan_tiles(expert_A, num_experts: int, block_m: int):
    """Tile-padded placement of A (row, expert) assignments, expert_A in [0, E] (E = dropped).

    Returns dict(slot_A [A] int32: row of each assignment in the padded layout (M_pad for
    dropped ones), tile_expert [max_tiles] int32, num_tiles [1] int32, M_pad: int).
    M_pad = max_tiles * block_m is static: it bounds sum_e ceil(count_e / block_m).
    Rows of one expert keep the order of their assignments. The layout does not depend on which
    of the two constructions (compare-based up to SMALL_PLAN_MAX_ROWS, sort-based above) runs.
    """
    A = expert_A.shape[0]
    E = num_experts
    max_tiles = (A + min(E, A) * (block_m - 1)) // block_m
    M_pad = max_tiles * block_m
    expert_A = expert_A.astype(jnp.int32)
    build = _counts_and_ranks_small if A <= SMALL_PLAN_MAX_ROWS else _counts_and_ranks_sorted
    counts, rank_A = build(expert_A, E)
    tiles = (counts + block_m - 1) // block_m
    tile_start = _exclusive_cumsum(tiles)
    tile_end = tile_start + tiles
    e_c = jnp.minimum(expert_A, E - 1)
    slot_A = jnp.where(expert_A < E, tile_start[e_c] * block_m + rank_A, M_pad).astype(jnp.int32)
    # Expert of tile i = number of experts whose tiles end at or before i (searchsorted, right).
    tile_expert = jnp.minimum(
        jnp.sum(tile_end[None, :] <= jnp.arange(max_tiles, dtype=jnp.int32)[:, None], axis=1,
                dtype=jnp.int32), E - 1)
    num_tiles = jnp.sum(tiles, dtype=jnp.int32).reshape(1)
    return dict(slot_A=slot_A, tile_expert=tile_expert, num_tiles=num_tiles, M_pad=M_pad)


def _exclusive_cumsum(v_E):
    """sum_{e' < e} v[e'] as one masked reduction (E is small): fuses, unlike a scan."""
    E = v_E.shape[0]
    below = jnp.arange(E)[None, :] < jnp.arange(E)[:, None]
    return jnp.sum(jnp.where(below, v_E[None, :], 0), axis=1, dtype=jnp.int32)


def _counts_and_ranks_small(expert_A, E: int):
    """counts [E] (rows per expert, dropped rows excluded) and rank_A [A] (earlier rows with the
    same expert), from [A, E] and [A, A] compare matrices."""
    A = expert_A.shape[0]
    counts = jnp.sum(expert_A[:, None] == jnp.arange(E, dtype=jnp.int32)[None, :], axis=0,
                     dtype=jnp.int32)
    idx = jnp.arange(A, dtype=jnp.int32)
    earlier_same = (expert_A[None, :] == expert_A[:, None]) & (idx[None, :] < idx[:, None])
    return counts, jnp.sum(earlier_same, axis=1, dtype=jnp.int32)


def _counts_and_ranks_sorted(expert_A, E: int):
    """Same as `_counts_and_ranks_small` from one single-key sort (stable order + expert ids)."""
    A = expert_A.shape[0]
    keys = jnp.sort(expert_A * A + jnp.arange(A, dtype=jnp.int32))
    order = keys % A
    sorted_e = keys // A
    counts = jnp.bincount(expert_A, length=E + 1)[:E].astype(jnp.int32)
    group_start = jnp.cumsum(counts) - counts
    rank_sorted = jnp.arange(A, dtype=jnp.int32) - group_start[jnp.minimum(sorted_e, E - 1)]
    rank_A = jnp.zeros((A,), jnp.int32).at[order].set(rank_sorted, unique_indices=True)
    return counts, rank_A


def scatter_rows(slot_A, values_A, M_pad: int):
    """[M_pad] array with values_A[a] at row slot_A[a] (dropped slots ignored), 0 elsewhere.

    Small layouts select through a [M_pad, A] compare (fused with its consumers); large ones
    scatter."""
    A = slot_A.shape[0]
    if A <= SMALL_PLAN_MAX_ROWS:
        hit = jnp.arange(M_pad, dtype=jnp.int32)[:, None] == slot_A[None, :]
        return jnp.sum(jnp.where(hit, values_A[None, :], 0), axis=1).astype(values_A.dtype)
    return jnp.zeros((M_pad,), values_A.dtype).at[slot_A].set(values_A, mode="drop",
                                                                unique_indices=True)


def _num_sms() -> int:
    dev = jax.devices()[0]
    return getattr(dev, "core_count", None) or 132


def grouped_matmul(x, weights, tile_expert, num_tiles, *, config: TileConfig,
                   biases=None, row_scale=None, activation: str | None = None,
                   alpha: float = 1.702, limit: float = 7.0, x_transposed: bool = False,
                   shared_rows: bool = False, out_dtype=None, num_sms: int | None = None):
    """out = epilogue(x_tile @ W[tile_expert[tile]]) over the row tiles of a tile-padded layout.

    x: [M, K] (or [K, M] if x_transposed; needs config.swap). weights: tuple of one or two
    [E, K, N] arrays; with two, `activation` (see activations.py) combines them into one [.., N]
    result. biases: None or a matching tuple of [E, N]. row_scale: None or [M] f32 multiplied
    into each row. Returns [M, N] (config.swap=False) or [N, M] (config.swap=True).
    shared_rows: x is [block_m, K], read by every tile; M = len(tile_expert) * block_m.
    """
    weights = tuple(weights)
    nw = len(weights)
    if nw not in (1, 2) or (nw == 2) != (activation is not None):
        raise ValueError("pass one weight array, or two with an activation")
    if x_transposed and not config.swap:
        raise ValueError("x_transposed needs the swapped (decode) orientation")
    K, M = x.shape if x_transposed else x.shape[::-1]
    E, K2, N = weights[0].shape
    if K2 != K:
        raise ValueError(f"x has K={K}, weights K={K2}")
    cfg = config
    cfg.validate(K, N)
    if shared_rows:
        if x_transposed or M != cfg.block_m:
            raise ValueError(f"shared_rows needs x as [block_m={cfg.block_m}, K], got {x.shape}"
                             f"{' (transposed)' if x_transposed else ''}")
        M = tile_expert.shape[0] * cfg.block_m
    if M % cfg.block_m:
        raise ValueError(f"M={M} must be a multiple of block_m={cfg.block_m}")
    out_dtype = out_dtype or x.dtype
    has_bias = biases is not None
    has_scale = row_scale is not None
    bm, bn, bk, wgs = cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_compute_wgs
    n_blocks = N // bn
    # Per compute warpgroup: accumulator (wg_rows, wg_cols) on wgmma's (M, N).
    acc_shape = (bn // wgs, bm) if cfg.swap else (bm // wgs, bn)

    def kernel(tile_expert_ref, num_tiles_ref, x_ref, *refs):
        w_refs = refs[:nw]
        b_refs = refs[nw:nw + nw * has_bias]
        s_ref = refs[nw + nw * has_bias] if has_scale else None
        out_ref = refs[-1]
        wg = lax.axis_index("wg")

        x_spec = plgpu.BlockSpec((bk, bm) if x_transposed else (bm, bk),
                                 (lambda k: (k, 0)) if x_transposed else (lambda k: (0, k)),
                                 delay_release=1)
        w_spec = plgpu.BlockSpec((bk, bn), lambda k: (k, 0), delay_release=1)

        def make_pipeline(body, context):
            return plgpu.emit_pipeline_warp_specialized(
                body, grid=(K // bk,), memory_registers=40,
                in_specs=[x_spec] + [w_spec] * nw, wg_axis="wg", num_compute_wgs=wgs,
                max_concurrent_steps=cfg.stages, compute_context=context)

        def _epilogue(e, mi, ni, wg, vals, out_smem):
            # Rows/cols of this warpgroup's accumulator in the output array.
            r_len, c_len = acc_shape
            if cfg.swap:  # acc rows = weight columns, acc cols = tokens
                wcol0 = ni * bn + wg * r_len
                tok0 = mi * bm
            else:
                wcol0 = ni * bn
                tok0 = mi * bm + wg * r_len
            wlen = r_len if cfg.swap else c_len
            tlen = c_len if cfg.swap else r_len
            wdim, tdim = (0, 1) if cfg.swap else (1, 0)
            if has_bias:
                vals = [v + lax.broadcast_in_dim(
                    plgpu.load(b.at[e, pl.ds(wcol0, wlen)],
                               layout=_ROW if cfg.swap else _COL,
                               optimized=False).astype(jnp.float32),
                    acc_shape, [wdim]) for v, b in zip(vals, b_refs)]
            y = apply_activation(activation, *vals, alpha, limit) if nw == 2 else vals[0]
            if has_scale:
                s = plgpu.load(s_ref.at[pl.ds(tok0, tlen)], layout=_COL if cfg.swap else _ROW,
                               optimized=False)
                y = y * lax.broadcast_in_dim(s, acc_shape, [tdim])
            # The previous tile's store must have read out_smem before it is overwritten.
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            out_smem[wg] = y.astype(out_dtype)
            plgpu.commit_smem()
            dst = (out_ref.at[pl.ds(wcol0, wlen), pl.ds(tok0, tlen)] if cfg.swap
                   else out_ref.at[pl.ds(tok0, tlen), pl.ds(wcol0, wlen)])
            plgpu.copy_smem_to_gmem(out_smem.at[wg], dst)

        x_view0 = x_ref.at[:, pl.ds(0, bm)] if x_transposed else x_ref.at[pl.ds(0, bm)]
        w_views0 = [w.at[0, :, pl.ds(0, bn)] for w in w_refs]
        noop = lambda *_, **__: None

        @functools.partial(
            pl.run_scoped,
            allocs=make_pipeline(noop, noop).get_allocations(x_view0, *w_views0),
            out_smem=plgpu.SMEM((wgs, *acc_shape), out_dtype),
            collective_axes="wg")
        def _scope(allocs, out_smem):
            @plgpu.nd_loop((num_tiles_ref[0] * n_blocks,), collective_axes="sm")
            def _work(info):
                (idx,) = info.index
                mi = idx // n_blocks
                ni = idx % n_blocks
                e = tile_expert_ref[mi]
                rows = pl.ds(0 if shared_rows else mi * bm, bm)
                cols = pl.ds(ni * bn, bn)
                x_view = x_ref.at[:, rows] if x_transposed else x_ref.at[rows]
                w_views = [w.at[e, :, cols] for w in w_refs]

                def mma(_, x_smem, *w_smems_and_accs):
                    w_smems = w_smems_and_accs[:nw]
                    accs = w_smems_and_accs[nw]
                    for w_smem, acc in zip(w_smems, accs):
                        if cfg.swap:
                            a = w_smem.transpose((1, 0))
                            if wgs > 1:
                                a = a.at[pl.ds(wg * acc_shape[0], acc_shape[0])]
                            b = x_smem if x_transposed else x_smem.transpose((1, 0))
                        else:
                            a = x_smem.at[pl.ds(wg * acc_shape[0], acc_shape[0])] if wgs > 1 \
                                else x_smem
                            b = w_smem
                        plgpu.wgmma(acc, a, b)
                    # Keep this step's products in flight; the previous step's slot is released.
                    plgpu.wgmma_wait(nw)
                    return accs

                def context(run_pipeline):
                    def with_accs(*accs):
                        run_pipeline(accs)
                        plgpu.wgmma_wait(0)
                        _epilogue(e, mi, ni, wg, [acc[...] for acc in accs], out_smem)
                    pl.run_scoped(with_accs, *[plgpu.ACC(acc_shape, jnp.float32)] * nw)

                make_pipeline(mma, context)(x_view, *w_views, allocations=allocs)

        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    out_shape = (N, M) if cfg.swap else (M, N)
    call = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct(out_shape, out_dtype),
        grid=(num_sms or _num_sms(),),
        grid_names=("sm",),
        num_threads=wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(
            lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
    )
    args = [tile_expert.astype(jnp.int32), num_tiles.astype(jnp.int32), x, *weights]
    if has_bias:
        args += list(biases)
    if has_scale:
        args.append(row_scale.astype(jnp.float32))
    return call(*args)
