"""The Mosaic GPU kernel of ragged paged attention: one warp-specialised body for decode and
prefill tiles. The tile plan, the query/output gathers and the split-KV combine live in
`paged_attention.py`; its module docstring gives the design.

Shapes: N KV heads, R = H / N query heads per KV head, A head dim, L layers, P pages, Z tokens per
page, M pages per sequence, S key splits; a tile has rows = block_q * R query rows
(row = token * R + head), 64 per compute warpgroup.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

MASK = -1e30  # masked logit (log2 units): finite so exp2(MASK - MASK) = 1, never NaN
SMEM_BYTES = 227 * 1024  # usable shared memory per SM on Hopper
WG_ROWS = 64  # query rows of one compute warpgroup (wgmma M)
_ROW = plgpu.Layout.WGMMA.reduce(1)  # a [rows] vector broadcast along an accumulator's columns
_INFO = 5  # per tile: sequence, first key block, end key block, first and end unmasked block


@dataclasses.dataclass(frozen=True)
class AttentionTileConfig:
    """Block sizes of one call.

    block_q: query tokens per tile; block_q * R = 64 (one compute warpgroup) or 128 (two, each
      owning 64 rows and sharing the tile's key stream, FA3-style ping-pong).
    block_kv: keys per pipeline step (a multiple of the page size and of 64).
    stages: key/value blocks in flight per CTA (the producer warpgroup's ring).
    ctas_per_sm: CTAs resident per SM (their SMEM must fit together).
    kv_splits: key-range splits per (tile, KV head) merged by a log-sum-exp combine
      (flash-decoding); 0 = as many as fill the SMs when tiles x KV heads are fewer than them.
    p_via_smem: feed the probabilities to the PV wgmma through SMEM instead of registers. GPU
      interpret mode (the CPU tests) only models SMEM wgmma operands, so the CPU tests set it;
      the GPU tests run the register path (the default) on model shapes.
    """
    block_q: int
    block_kv: int = 64
    stages: int = 4
    ctas_per_sm: int = 1
    kv_splits: int = 0
    p_via_smem: bool = False

    def compute_wgs(self, R: int) -> int:
        return self.block_q * R // WG_ROWS

    def smem_bytes(self, R: int, A: int, itemsize: int = 2) -> int:
        """SMEM of one CTA in bytes: query/output tiles, the K and V ring, SMEM probabilities."""
        rows = self.block_q * R
        p = rows * self.block_kv if self.p_via_smem else 0
        return ((rows + 2 * self.stages * self.block_kv) * A + p) * itemsize + rows * 4

    def validate(self, R: int, A: int, Z: int):
        if self.block_q * R not in (WG_ROWS, 2 * WG_ROWS):
            raise ValueError(f"{self}: block_q * R = {self.block_q * R} must be 64 or 128")
        if self.block_kv % 64 or self.block_kv % Z:
            raise ValueError(f"{self}: block_kv must be a multiple of 64 and of the page size {Z}")
        if self.stages < 1 or self.ctas_per_sm < 1 or self.kv_splits < 0:
            raise ValueError(f"{self}: stages and ctas_per_sm must be >= 1, kv_splits >= 0")
        if self.ctas_per_sm * self.smem_bytes(R, A) > SMEM_BYTES:
            raise ValueError(f"{self}: {self.ctas_per_sm} x {self.smem_bytes(R, A)} B exceeds SMEM")


def attention_kernel(config: AttentionTileConfig, *, N: int, R: int, A: int, Z: int, M: int,
                     scale: float, dtype, max_tiles: int, num_ctas: int, splits: int, T: int,
                     in_place: bool, sinks_per_layer: bool | None, window_per_layer: bool):
    """plgpu.kernel(layer [1], num_tiles [1], window_sel [1 or L], windows [W], order [W, max_tiles],
    info [W, max_tiles, 5], span [max_tiles, 2] (first row, valid rows of each tile), table [B, M],
    qpos rows [max_tiles, rows], (sink rows [1 or L, S, N, rows] in log2 units, MASK in splits > 0
    so the sink counts once; absent when sinks_per_layer is None), q, k/v pools [L, P, Z, N, A])
    -> o (and when S > 1 lse, f32 log2 units), each split normalised.

    The layer's window is windows[window_sel[layer]] when window_per_layer, else windows[window_sel[0]];
    its sink rows are sink_rows[layer] when sinks_per_layer, else sink_rows[0]: the executor's
    per-layer choices are read here, so a layer's call is this one launch.

    in_place (R a multiple of 8: each token's R heads are whole 8-row SMEM tiles): q is [T, H, A]
    read by TMA straight from the call's queries (one [R, A] box per token of a tile), o [T, H, A]
    (S > 1: o [S, T, H, A], lse [S, T, H]) written straight back, only for the tile's valid rows.
    Otherwise q is [max_tiles, N, rows, A] gathered by the wrapper and o [S, max_tiles, N, rows,
    A], lse [S, max_tiles, N, rows] come back in tile layout.

    Warpgroups: `wgs` compute warpgroups (64 rows each) and one producer that streams the pages
    of each key block by TMA into a ring of `stages` slots; a slot's K (V) is released as soon as
    every compute warpgroup's QK (PV) wgmma has read it. Units (tile, KV head, split) are walked
    by a persistent grid in `order`; the producer runs ahead across units.
    """
    wgs = config.compute_wgs(R)
    bk, stages = config.block_kv, config.stages
    pages_per_block = bk // Z
    qk_scale = scale * math.log2(math.e)
    pingpong = wgs == 2
    wg_tokens = WG_ROWS // R  # tokens of one compute warpgroup's rows (row = token * R + head)
    if in_place and R % 8:
        raise ValueError(f"in-place q/o needs R = H / N a multiple of 8 (whole SMEM row tiles), got {R}")

    def unit_range(u, info_ref, order_ref):
        """(tile, KV head, split, sequence, key blocks [lo, hi), unmasked blocks [a, b))."""
        tile = order_ref[u // (N * splits)]
        n = lax.rem(u // splits, N)
        s = lax.rem(u, splits)
        seq, kv_lo, kv_hi = info_ref[tile, 0], info_ref[tile, 1], info_ref[tile, 2]
        chunk = (kv_hi - kv_lo + splits - 1) // splits
        lo = jnp.minimum(kv_lo + s * chunk, kv_hi)
        hi = jnp.minimum(lo + chunk, kv_hi)
        a = jnp.clip(info_ref[tile, 3], lo, hi)
        b = jnp.clip(info_ref[tile, 4], a, hi)
        return tile, n, s, seq, lo, hi, a, b

    def ragged_paged_attention(layer_ref, num_tiles_ref, window_sel_ref, windows_ref, order_all_ref, info_all_ref,
                               span_ref, table_ref, qpos_ref, *refs, q_smem, k_smem, v_smem, q_bar, k_bar, v_bar,
                               k_free, v_free, p_smem=None, lse_smem=None, sched=None):
        sinks_ref = refs[0] if sinks_per_layer is not None else None
        q_ref, k_ref, v_ref, o_ref, *lse_ref = refs[sinks_per_layer is not None:]
        layer, num_tiles = layer_ref[0], num_tiles_ref[0]
        w = window_sel_ref[layer] if window_per_layer else window_sel_ref[0]
        window = windows_ref[w]
        order_ref, info_ref = order_all_ref.at[w], info_all_ref.at[w]
        wg = lax.axis_index("wg")
        units = (num_tiles * (N * splits),)

        def schedule():
            """Ping-pong: the two compute warpgroups take turns on the tensor cores."""
            if pingpong:
                plgpu.barrier_arrive(sched)
                plgpu.barrier_wait(sched)

        @pl.when(wg == wgs)
        def _producer():
            if pingpong:
                plgpu.set_max_registers(40, action="decrease")

            @plgpu.nd_loop(units, collective_axes="sm", init_carry=jnp.int32(0))
            def _unit(info, carry):
                _, n, _, seq, lo, hi, _, _ = unit_range(info.index[0], info_ref, order_ref)

                def fetch(j, count):
                    slot = lax.rem(count, stages)
                    for ref, smem, bar, free in ((k_ref, k_smem, k_bar, k_free), (v_ref, v_smem, v_bar, v_free)):
                        plgpu.barrier_wait(free.at[slot])
                        for i in range(pages_per_block):
                            page = table_ref[seq, jnp.minimum(j * pages_per_block + i, M - 1)]
                            plgpu.copy_gmem_to_smem(ref.at[layer, page, :, n, :],
                                                    smem.at[slot, pl.ds(i * Z, Z)], bar.at[slot])
                    return count + 1
                return lax.fori_loop(lo, hi, fetch, carry)

            for slot in range(stages):  # the last releases (kept balanced: every phase waited)
                plgpu.barrier_wait(k_free.at[slot])
                plgpu.barrier_wait(v_free.at[slot])

        @pl.when(wg < wgs)
        def _compute():
            if pingpong:
                plgpu.set_max_registers(232, action="increase")
            for slot in range(stages):  # every slot starts free: the producer waits before each fill
                plgpu.barrier_arrive(k_free.at[slot])
                plgpu.barrier_arrive(v_free.at[slot])
            rows = pl.ds(wg * WG_ROWS, WG_ROWS)
            q_wg, q_bar_wg = q_smem.at[wg], q_bar.at[wg]

            def step(masked, qpos, j, carry):
                m, l, o, count = carry
                slot = lax.rem(count, stages)
                plgpu.barrier_wait(k_bar.at[slot])

                def qk(acc):
                    plgpu.wgmma(acc, q_wg, k_smem.at[slot].transpose((1, 0)))
                    schedule()
                    return acc[...]
                s = pl.run_scoped(qk, plgpu.ACC((WG_ROWS, bk), jnp.float32))
                plgpu.barrier_arrive(k_free.at[slot])
                s = s * qk_scale
                if masked:
                    kpos = plgpu.broadcasted_iota(jnp.int32, s.shape, 1, layout=plgpu.Layout.WGMMA) + j * bk
                    d = lax.broadcast_in_dim(qpos, s.shape, [0]) - kpos
                    s = jnp.where((d >= 0) & (d < window), s, MASK)
                m_new = jnp.maximum(m, s.max(axis=1))
                alpha = jnp.exp2(m - m_new)
                p = jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0]))
                l = l * alpha + p.sum(axis=1)
                o = o * lax.broadcast_in_dim(alpha, o.shape, [0])
                p = p.astype(dtype)
                if pingpong:
                    plgpu.barrier_arrive(sched)  # softmax done
                plgpu.barrier_wait(v_bar.at[slot])
                if pingpong:
                    plgpu.barrier_wait(sched)  # the other warpgroup's wgmma is issued
                if p_smem is None:  # P in registers, accumulated in place into o
                    def pv(acc):
                        plgpu.wgmma(acc, p, v_smem.at[slot])
                    o = pl.run_state(pv)(plgpu.ACC.init(o))  # reading o waits: V is read
                else:  # interpret mode models neither register A operands nor run_state
                    p_smem.at[wg][...] = p
                    plgpu.commit_smem()  # make the store visible to wgmma's async proxy

                    def pv(acc):
                        plgpu.wgmma(acc, p_smem.at[wg], v_smem.at[slot])
                        return acc[...]
                    o = o + pl.run_scoped(pv, plgpu.ACC((WG_ROWS, A), jnp.float32))
                plgpu.barrier_arrive(v_free.at[slot])
                return m_new, l, o, count + 1

            @plgpu.nd_loop(units, collective_axes="sm", init_carry=jnp.int32(0))
            def _unit(info, carry):
                tile, n, s, _, lo, hi, a, b = unit_range(info.index[0], info_ref, order_ref)
                heads = pl.ds(n * R, R)
                tok0 = span_ref[tile, 0] + wg * wg_tokens  # this warpgroup's first row in q / o
                valid = span_ref[tile, 1] - wg * wg_tokens  # ... and how many of its tokens are real
                # The previous unit's output store must have read q_wg before it is reused.
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)
                if in_place:  # a token past the batch's rows reads the last row: finite, never stored
                    for t in range(wg_tokens):
                        plgpu.copy_gmem_to_smem(q_ref.at[jnp.minimum(tok0 + t, T - 1), heads],
                                                q_wg.at[pl.ds(t * R, R)], q_bar_wg)
                else:
                    plgpu.copy_gmem_to_smem(q_ref.at[tile, n, rows], q_wg, q_bar_wg)
                qpos = plgpu.load(qpos_ref.at[tile, rows], layout=_ROW, optimized=False)
                if sinks_ref is None:
                    m0 = plgpu.layout_cast(jnp.full((WG_ROWS,), MASK, jnp.float32), _ROW)
                else:
                    m0 = plgpu.load(sinks_ref.at[layer if sinks_per_layer else 0, s, n, rows], layout=_ROW,
                                    optimized=False)
                l0 = plgpu.layout_cast(jnp.full((WG_ROWS,), 1.0, jnp.float32), _ROW)
                o0 = plgpu.layout_cast(jnp.zeros((WG_ROWS, A), jnp.float32), plgpu.Layout.WGMMA)
                plgpu.barrier_wait(q_bar_wg)
                if pingpong:
                    pl.when(wg == 1)(schedule)
                carry = (m0, l0, o0, carry)
                # Masks only where a block crosses some row's causal or window edge.
                carry = lax.fori_loop(lo, a, lambda j, c: step(True, qpos, j, c), carry)
                carry = lax.fori_loop(a, b, lambda j, c: step(False, qpos, j, c), carry)
                m, l, o, count = lax.fori_loop(b, hi, lambda j, c: step(True, qpos, j, c), carry)
                if pingpong:
                    pl.when(wg == 0)(schedule)
                q_wg[...] = (o / lax.broadcast_in_dim(l, o.shape, [0])).astype(dtype)
                if lse_smem is not None:
                    lse_smem.at[wg][...] = m + jnp.log(l) * math.log2(math.e)
                plgpu.commit_smem()
                if in_place:  # only the tile's own rows: the next rows belong to another tile
                    for t in range(wg_tokens):
                        @pl.when(t < valid)
                        def _store():
                            o_row = o_ref.at[s, tok0 + t] if splits > 1 else o_ref.at[tok0 + t]
                            plgpu.copy_smem_to_gmem(q_wg.at[pl.ds(t * R, R)], o_row.at[heads])
                            if lse_smem is not None:
                                plgpu.copy_smem_to_gmem(lse_smem.at[wg, pl.ds(t * R, R)],
                                                        lse_ref[0].at[s, tok0 + t, heads])
                else:
                    plgpu.copy_smem_to_gmem(q_wg, o_ref.at[s, tile, n, rows])
                    if lse_smem is not None:
                        plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref[0].at[s, tile, n, rows])
                return count

            plgpu.wait_smem_to_gmem(0)

    transforms = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    scratch = dict(
        q_smem=plgpu.SMEM((wgs, WG_ROWS, A), dtype, transforms=transforms),
        k_smem=plgpu.SMEM((stages, bk, A), dtype, transforms=transforms),
        v_smem=plgpu.SMEM((stages, bk, A), dtype, transforms=transforms),
        q_bar=plgpu.Barrier(num_arrivals=wg_tokens if in_place else 1, num_barriers=wgs),  # one per q copy
        k_bar=plgpu.Barrier(num_arrivals=pages_per_block, num_barriers=stages),
        v_bar=plgpu.Barrier(num_arrivals=pages_per_block, num_barriers=stages),
        k_free=plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
        v_free=plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),
    )
    if config.p_via_smem:
        scratch["p_smem"] = plgpu.SMEM((wgs, WG_ROWS, bk), dtype, transforms=transforms)
    if splits > 1:
        scratch["lse_smem"] = plgpu.SMEM((wgs, WG_ROWS), jnp.float32)
    if pingpong:
        scratch["sched"] = plgpu.Barrier(num_arrivals=wgs)
    rows_total = wgs * WG_ROWS
    if in_place:
        o_shape = (T, N * R, A) if splits == 1 else (splits, T, N * R, A)
        lse_shape = (splits, T, N * R)
    else:
        o_shape, lse_shape = (splits, max_tiles, N, rows_total, A), (splits, max_tiles, N, rows_total)
    return plgpu.kernel(
        ragged_paged_attention,  # the kernel's name in profiles
        out_type=(jax.ShapeDtypeStruct(o_shape, dtype),
                  *[jax.ShapeDtypeStruct(lse_shape, jnp.float32)] * (splits > 1)),
        scratch_types=scratch,
        grid=(num_ctas,),
        grid_names=("sm",),
        num_threads=wgs + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )
