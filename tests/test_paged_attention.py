"""Ragged paged-attention Pallas kernel against the float32 reference.

CPU: the real Mosaic GPU kernel in GPU interpret mode on tiny ragged batches: decode-only,
prefill-only, mixed (decodes + a chunk over a paged prefix + a whole prompt), prompts crossing page
boundaries, kv_len a multiple of the key block, sliding windows smaller than a block with queries
right at the window edge, sinks, GQA 8 and 16, head dims 64 and 128, padding rows, a traced layer
and window (as the executor passes them), and the dispatch. GPU (marker `gpu`): model shapes.
"""

import dataclasses
import functools

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import dispatch
from pallas_kernels.attention_reference import FULL_WINDOW, paged_attention_reference
from pallas_kernels.attention_tuning import default_config
from pallas_kernels.interpret import gpu_interpret_mode
from pallas_kernels.paged_attention import AttentionTileConfig, batch_plan, paged_attention

Z = 16  # page size (lp_jax's default)
DECODE_R8 = AttentionTileConfig(block_q=8, block_kv=64, stages=3, p_via_smem=True)
PREFILL_R8 = AttentionTileConfig(block_q=16, block_kv=64, stages=2, ctas_per_sm=2, p_via_smem=True)
DECODE_R16 = AttentionTileConfig(block_q=4, block_kv=64, stages=2, p_via_smem=True)
DECODE_R4 = AttentionTileConfig(block_q=16, block_kv=64, stages=2, p_via_smem=True)
PREFILL_R16 = AttentionTileConfig(block_q=8, block_kv=128, stages=2, p_via_smem=True)


def ragged_batch(key, seqs, *, H, N, A, L=2, pad_rows=0, max_pages=None, dtype=jnp.bfloat16):
    """A call's arrays for sequences [(kv_len, q_len)]: each sequence's rows are its last q_len
    positions; pages are distinct random ids >= 1 (page 0 = trash); the last table row is the
    padding sequence's (all trash), and `pad_rows` rows of it (pos 0) close the batch."""
    B = len(seqs) + 1
    M = max_pages or max(-(-kv // Z) for kv, _ in seqs) + 1
    need = sum(-(-kv // Z) for kv, _ in seqs)
    P = need + 3
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 1 << 30)))
    pages = rng.permutation(np.arange(1, P))[:need]
    table = np.zeros((B, M), np.int32)
    seq, pos, used = [], [], 0
    for b, (kv, q) in enumerate(seqs):
        n = -(-kv // Z)
        table[b, :n] = pages[used:used + n]
        used += n
        seq += [b] * q
        pos += list(range(kv - q, kv))
    seq += [B - 1] * pad_rows
    pos += [0] * pad_rows
    ks = jax.random.split(key, 4)
    T = len(seq)
    return dict(
        q_THA=jax.random.normal(ks[0], (T, H, A), dtype),
        k_pool_LPZNA=jax.random.normal(ks[1], (L, P, Z, N, A), dtype),
        v_pool_LPZNA=jax.random.normal(ks[2], (L, P, Z, N, A), dtype),
        block_table_BM=jnp.asarray(table), seq_T=jnp.asarray(seq, jnp.int32),
        pos_T=jnp.asarray(pos, jnp.int32))


@functools.cache
def _jitted_reference(layer):
    """The float32 reference at a static layer, jitted (window and sinks traced): one compile per
    batch shape instead of running its ops one by one."""
    return jax.jit(lambda batch, window, sinks_H: paged_attention_reference(
        layer=layer, **batch, window=window, sinks_H=sinks_H))


def reference(batch, layer, *, window=FULL_WINDOW, sinks_H=None):
    f32 = {k: v.astype(jnp.float32) if v.dtype == jnp.bfloat16 else v for k, v in batch.items()}
    return _jitted_reference(layer)(f32, jnp.int32(window), sinks_H)


def rel_err(out, ref):
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    assert np.all(np.isfinite(out))
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@functools.cache
def _jitted_kernel(cfg, layer, num_sms):
    """The kernel in GPU interpret mode at a static config, layer and SM count, jitted with the
    window and sinks traced: a second window on a batch of the same shapes reuses the compiled
    interpreter (which an eager call traces and compiles again)."""
    def run(batch, window, sinks_H):
        with gpu_interpret_mode():
            return paged_attention(layer=layer, **batch, window=window, sinks_H=sinks_H, config=cfg,
                                   num_sms=num_sms)
    return jax.jit(run)


def check(batch, cfg, *, layer=1, window=FULL_WINDOW, sinks_H=None, num_sms=1):
    """The kernel against the reference. One SM by default: the interpreter runs CTAs one after
    another and each costs CPU time; the result does not depend on the grid, and the tests that
    pass num_sms=3 keep several CTAs walking the units (and splits) in the CPU suite."""
    out = _jitted_kernel(cfg, layer, num_sms)(batch, jnp.int32(window), sinks_H)
    ref = reference(batch, layer, window=window, sinks_H=sinks_H)
    assert out.shape == batch["q_THA"].shape and out.dtype == batch["q_THA"].dtype
    assert rel_err(out, ref) <= 1e-2
    return out


def test_batch_plan_cuts_runs_and_bounds_key_blocks():
    seq = jnp.array([0, 1, 1, 1, 1, 1, 2, 3, 3], jnp.int32)
    pos = jnp.array([80, 10, 11, 12, 13, 14, 200, 0, 0], jnp.int32)
    cfg = AttentionTileConfig(block_q=4, block_kv=64)
    p = batch_plan(seq, pos, H=4, N=1, A=64, num_seqs=4, windows=(8, FULL_WINDOW), config=cfg)
    assert int(p["num_tiles"]) == 5 and p["max_tiles"] == (9 + 4 * 3) // 4
    assert p["tile_T"].tolist() == [0, 1, 1, 1, 1, 2, 3, 4, 4]
    assert p["slot_T"].tolist() == [0, 0, 1, 2, 3, 0, 0, 0, 1]
    info, full = np.asarray(p["info"][0])[:5], np.asarray(p["info"][1])
    # (sequence, first/end key block, first/end unmasked block): window 8 keeps 80 in block 1
    # only; 200 -> block 3; every visited block crosses a row's window or causal edge.
    assert info.tolist() == [[0, 1, 2, 2, 1], [1, 0, 1, 1, 0], [1, 0, 1, 1, 0], [2, 3, 4, 4, 3],
                             [3, 0, 1, 0, 0]]
    assert full[3, 1:3].tolist() == [0, 4]  # position 200: blocks 0-2 need no mask
    assert full[3, 4] == 3 and full[3, 3] <= 0
    assert np.asarray(p["qpos"])[2].tolist() == [14, -1, -1, -1]
    assert sorted(np.asarray(p["order"][0])[:5].tolist()) == [0, 1, 2, 3, 4]


def test_decode_only_gqa8_head128_with_padding():
    # kv_len 1, one page exactly, a whole block (64), crossing pages, two blocks + 1.
    b = ragged_batch(jax.random.key(0), [(1, 1), (16, 1), (64, 1), (100, 1), (129, 1)], H=16, N=2, A=128,
                     pad_rows=3)
    check(b, DECODE_R8)


def test_prefill_only_prompts_crossing_pages_gqa8():
    # One prompt of exactly two blocks (128 keys: kv_len a multiple of the block), one of 37.
    b = ragged_batch(jax.random.key(1), [(128, 128), (37, 37)], H=8, N=1, A=128)
    check(b, PREFILL_R8)


def test_mixed_decodes_chunk_over_paged_prefix_and_prompt():
    # Decodes, a 30-row chunk over a 120-key prefix, a whole 20-token prompt, padding rows.
    b = ragged_batch(jax.random.key(2), [(70, 1), (150, 30), (9, 1), (20, 20)], H=16, N=2, A=64, pad_rows=5)
    check(b, PREFILL_R8, num_sms=3)
    check(b, DECODE_R8, num_sms=3)  # the decode tile shape on a mixed batch gives the same result


@pytest.mark.parametrize("window", [8, 40])
def test_sliding_window_edges_with_sinks(window):
    # window 8 (< block): keys before the window's block are skipped. Decode queries at 64 +
    # window - 1 (window starts exactly on a block boundary) and at 64 + window (one past), and a
    # prefill chunk whose rows cross the boundary.
    seqs = [(64 + window, 1), (65 + window, 1), (140, 24), (3, 3)]
    b = ragged_batch(jax.random.key(3), seqs, H=8, N=1, A=64, pad_rows=2)
    sinks = jax.random.normal(jax.random.key(4), (8,), jnp.float32) * 2
    check(b, PREFILL_R8, window=window, sinks_H=sinks)
    check(b, DECODE_R8, window=window, sinks_H=sinks)


def test_sinks_full_window_decode():
    b = ragged_batch(jax.random.key(5), [(33, 1), (80, 1), (1, 1)], H=16, N=2, A=128)
    sinks = jax.random.normal(jax.random.key(6), (16,), jnp.float32) * 3
    check(b, DECODE_R8, sinks_H=sinks)


@pytest.mark.parametrize("window", [FULL_WINDOW, 40])
def test_key_splits_merge_with_sinks_and_windows(window):
    """kv_splits = 3 (flash-decoding): splits that see none of a row's keys (window, short
    sequences, the trash-page padding row) and the sink counted once; the automatic split count
    on 3 SMs is 1 here, so splits are forced."""
    b = ragged_batch(jax.random.key(12), [(200, 1), (70, 1), (150, 20), (5, 1)], H=16, N=2, A=64,
                     pad_rows=1)
    sinks = jax.random.normal(jax.random.key(13), (16,), jnp.float32) * 2
    check(b, dataclasses.replace(DECODE_R8, kv_splits=3), window=window, sinks_H=sinks, num_sms=3)
    check(b, dataclasses.replace(PREFILL_R8, kv_splits=2), window=window, num_sms=3)


@pytest.mark.parametrize("cfg", [DECODE_R16, PREFILL_R16])
def test_gqa16(cfg):
    b = ragged_batch(jax.random.key(7), [(90, 1), (45, 12), (128, 1)], H=16, N=1, A=64, pad_rows=1)
    check(b, cfg, layer=0)


def test_gqa4_goes_through_tile_gathers():
    """R = 4 heads per KV head is not a whole 8-row SMEM tile per token: q and o go through the
    wrapper's tile-layout gathers (the in-place path needs R % 8 == 0); decode and a chunk."""
    b = ragged_batch(jax.random.key(14), [(70, 1), (40, 20), (3, 1)], H=8, N=2, A=64, pad_rows=2)
    check(b, DECODE_R4)


def test_per_layer_window_index_and_stacked_sinks_are_read_in_the_kernel():
    """The executor passes every layer's window index ([L]) and the stacked sinks ([L, H]); the
    kernel reads them at the (traced) layer: the same result as the layer's own scalar index and
    sinks, for both layers (different windows and sinks)."""
    b = ragged_batch(jax.random.key(15), [(60, 1), (35, 12)], H=8, N=1, A=64, pad_rows=1)
    windows, index_L = (FULL_WINDOW, 16), jnp.array([1, 0], jnp.int32)
    sinks_LH = jax.random.normal(jax.random.key(16), (2, 8), jnp.float32) * 2
    B = b["block_table_BM"].shape[0]

    def run(layer, index, sinks):
        plan = batch_plan(b["seq_T"], b["pos_T"], H=8, N=1, A=64, num_seqs=B, windows=windows, config=PREFILL_R8)
        return paged_attention(layer=layer, **b, config=PREFILL_R8, num_sms=2, plan=plan, window_index=index,
                               sinks_H=sinks)
    with gpu_interpret_mode():
        run = jax.jit(run)  # the [L] and the scalar index each compile once, for both layers
        for layer in (0, 1):
            got = run(jnp.int32(layer), index_L, sinks_LH)
            want = run(jnp.int32(layer), index_L[layer], sinks_LH[layer])
            np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
            ref = reference(b, layer, window=windows[int(index_L[layer])], sinks_H=sinks_LH[layer])
            assert rel_err(got, ref) <= 1e-2


def test_a_planned_call_is_the_kernel_alone():
    """With a plan, no split and R % 8 == 0, the call is one kernel launch: q is read and o
    written in place, nothing is gathered, scattered, sliced or stacked around it (traced only)."""
    b = ragged_batch(jax.random.key(17), [(40, 1), (30, 16)], H=8, N=1, A=64)
    B = b["block_table_BM"].shape[0]
    plan = batch_plan(b["seq_T"], b["pos_T"], H=8, N=1, A=64, num_seqs=B, windows=(FULL_WINDOW, 16), config=PREFILL_R8)
    index_L = jnp.array([1, 0], jnp.int32)
    static = {k: v for k, v in plan.items() if isinstance(v, int)}
    arrays = {k: v for k, v in plan.items() if k not in static}
    jaxpr = jax.make_jaxpr(lambda layer, b, arrays: paged_attention(
        layer=layer, **b, config=PREFILL_R8, num_sms=1, plan=dict(arrays, **static),
        window_index=index_L))(jnp.int32(1), b, arrays)
    names = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    kernel = {"pallas_call", "custom_vmap_call"}  # plgpu.kernel wraps its pallas_call in the latter
    assert sum(n in kernel for n in names) == 1, names
    assert set(names) <= kernel | {"reshape", "convert_element_type"}, names


@functools.cache
def two_sequence_batch():
    """A decode (50 keys) and a 10-row chunk over a 20-key prefix, H=8, N=1, A=64 (shared by
    the traced-layer and shared-plan tests)."""
    return ragged_batch(jax.random.key(8), [(50, 1), (30, 10)], H=8, N=1, A=64)


def decode_tiles_planned_per_call(b, layer, window):
    """The kernel with DECODE_R8 on 2 SMs, planning the batch itself for `window`."""
    return paged_attention(layer=layer, **b, window=window, config=DECODE_R8, num_sms=2)


@functools.cache
def jitted_decode_tiles_planned_per_call():
    """decode_tiles_planned_per_call jitted with the layer and window traced (one compile for
    every layer and window of a batch shape), in GPU interpret mode."""
    def run(b, layer, window):
        with gpu_interpret_mode():
            return decode_tiles_planned_per_call(b, layer, window)
    return jax.jit(run)


def test_traced_layer_and_window_under_jit_match_eager():
    """The executor passes layer and window as traced int32 scalars inside its layer loop."""
    b = two_sequence_batch()
    traced = jitted_decode_tiles_planned_per_call()(b, jnp.int32(1), jnp.int32(16))
    with gpu_interpret_mode():
        eager = decode_tiles_planned_per_call(b, 1, 16)
    np.testing.assert_array_equal(np.asarray(traced, np.float32), np.asarray(eager, np.float32))
    assert rel_err(traced, reference(b, 1, window=16)) <= 1e-2


def test_a_plan_shared_by_layers_gives_each_window_what_planning_per_call_gives():
    """The executor plans a batch once per call for the model's distinct windows and each layer
    picks its window by a traced index."""
    b = two_sequence_batch()
    windows = (FULL_WINDOW, 16)
    B = b["block_table_BM"].shape[0]

    def shared(layer, index):
        plan = batch_plan(b["seq_T"], b["pos_T"], H=8, N=1, A=64, num_seqs=B, windows=windows, config=DECODE_R8)
        return paged_attention(layer=layer, **b, config=DECODE_R8, num_sms=2, plan=plan, window_index=index)
    with gpu_interpret_mode():
        shared = jax.jit(shared)
        for index, window in enumerate(windows):
            got = shared(jnp.int32(1), jnp.int32(index))
            want = jitted_decode_tiles_planned_per_call()(b, jnp.int32(1), jnp.int32(window))
            np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    other = dataclasses.replace(DECODE_R8, block_kv=128)
    plan = batch_plan(b["seq_T"], b["pos_T"], H=8, N=1, A=64, num_seqs=B, windows=windows, config=other)
    with pytest.raises(ValueError, match="same config"):
        paged_attention(layer=1, **b, config=DECODE_R8, plan=plan)


def test_dispatch_pallas_runs_the_kernel_and_falls_back_for_untiled_shapes():
    b = ragged_batch(jax.random.key(9), [(40, 1), (20, 4)], H=8, N=1, A=64)
    with gpu_interpret_mode():
        out = dispatch.paged_attention(layer=0, **b, window=FULL_WINDOW, backend="pallas")
    assert rel_err(out, reference(b, 0)) <= 1e-2
    assert dispatch.pallas_attention_supports(32, 4, 128, Z, jnp.bfloat16)
    assert not dispatch.pallas_attention_supports(12, 4, 128, Z, jnp.bfloat16)  # R = 3
    assert not dispatch.pallas_attention_supports(8, 1, 32, Z, jnp.bfloat16)  # A = 32
    assert not dispatch.pallas_attention_supports(8, 1, 64, Z, jnp.float32)


def test_default_configs_fit_and_tile():
    for H, N, A in [(32, 4, 128), (64, 8, 64), (16, 1, 128)]:
        for T, B in [(64, 65), (8192, 65), (2048, 257)]:
            default_config(H, N, A, T, B).validate(H // N, A, Z)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["decode", "prefill"])
@pytest.mark.parametrize("model", ["qwen3", "gpt_oss_sliding", "gpt_oss_full"])
def test_paged_attention_gpu(model, kind):
    """Model shapes in bf16 on the device: 48 decodes (1..4K keys), a 1000-row chunk over a
    1500-key prefix and a 700-token prompt, padding rows; with the decode and the prefill default
    tiles (the table picks one per call), P as the register operand (the CPU tests cover the
    SMEM path); the decode tile also on a batch of 2 (automatic key splits)."""
    H, N, A = (32, 4, 128) if model == "qwen3" else (64, 8, 64)
    cfg = default_config(H, N, A, 1, 2) if kind == "decode" else default_config(H, N, A, 2, 1)
    window = 128 if model == "gpt_oss_sliding" else FULL_WINDOW
    rng = np.random.default_rng(0)
    seqs = [(int(k), 1) for k in rng.integers(1, 4096, 48)] + [(2500, 1000), (700, 700)]
    if kind == "decode":  # and a batch-2 decode, whose units are split along the keys
        check_gpu([(3000, 1), (2048, 1)], H, N, A, cfg, window, model, pad_rows=6)
    check_gpu(seqs, H, N, A, cfg, window, model, pad_rows=30)


def check_gpu(seqs, H, N, A, cfg, window, model, pad_rows):
    b = ragged_batch(jax.random.key(10), seqs, H=H, N=N, A=A, L=2, pad_rows=pad_rows)
    sinks = jax.random.normal(jax.random.key(11), (H,), jnp.float32) if model != "qwen3" else None
    out = jax.jit(lambda b: paged_attention(layer=1, **b, window=window, sinks_H=sinks, config=cfg))(b)
    ref = jax.jit(lambda b: paged_attention_reference(layer=1, **b, window=window, sinks_H=sinks,
                                                      rows_per_block=32))(
        {k: v.astype(jnp.float32) if v.dtype == jnp.bfloat16 else v for k, v in b.items()})
    assert rel_err(out, ref) <= 1e-2
