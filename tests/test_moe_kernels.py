"""Grouped-MoE Pallas kernels against the float32 reference.

CPU: the real Mosaic GPU kernels in GPU interpret mode on small shapes (K=N=128, a few hundred
rows, 4-8 experts) covering empty experts, one hot expert, rows that do not fill a tile,
single-row groups, padding tokens, both orientations (tokens on wgmma M / on N), biases and the
router-weight scale. GPU (marker `gpu`): the model shapes on the device.
"""

import functools

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import grouped_matmul as gm
from pallas_kernels.activations import apply_activation
from pallas_kernels.grouped_matmul import TileConfig, grouped_matmul, plan_tiles, scatter_rows
from pallas_kernels.interpret import gpu_interpret_mode
from pallas_kernels.moe import moe_experts_pallas
from pallas_kernels.moe_reference import moe_experts_reference, random_experts
from pallas_kernels.moe_tuning import MoETileConfig, default_config

PREFILL = MoETileConfig(gate_up=TileConfig(128, 64, stages=2, num_compute_wgs=2),
                        down=TileConfig(128, 128, stages=3, num_compute_wgs=2))
PREFILL_1WG = MoETileConfig(gate_up=TileConfig(64, 128, stages=2, num_compute_wgs=1),
                            down=TileConfig(64, 64, stages=2, num_compute_wgs=1))
DECODE = MoETileConfig(gate_up=TileConfig(16, 64, stages=3, num_compute_wgs=1, swap=True),
                       down=TileConfig(16, 128, stages=2, num_compute_wgs=1, swap=True))
DECODE_2WG = MoETileConfig(gate_up=TileConfig(32, 128, stages=2, num_compute_wgs=2, swap=True),
                           down=TileConfig(32, 128, stages=2, num_compute_wgs=2, swap=True))


def rel_err(out, ref):
    out = np.asarray(out, np.float32)
    ref = np.asarray(ref, np.float32)
    assert np.all(np.isfinite(out))
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def routing(key, T, K, E, kind):
    """ids [T, K] (distinct per token) and softmax weights [T, K]."""
    k1, k2 = jax.random.split(key)
    logits = jax.random.normal(k1, (T, E))
    if kind == "hot":  # expert 0 gets every token; expert E-1 none
        logits = logits.at[:, 0].add(100.0).at[:, E - 1].add(-100.0)
    elif kind == "sparse":  # experts 1 and 2 empty, expert 3 only in row 0 (a 1-row group)
        logits = logits.at[:, 1:4].add(-100.0).at[0, 3].add(200.0)
    top, ids = jax.lax.top_k(logits, K)
    return jax.nn.softmax(top + jax.random.normal(k2, top.shape), axis=-1), ids.astype(jnp.int32)


def f32(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float32), tree)


def model_case(model: str, T: int):
    """(activation, experts, x [T, D] bf16, weights [T, K], ids [T, K]) at a model's MoE shapes
    (Qwen3-30B-A3B or GPT-OSS-20B) with uniform random routing, for the GPU tests."""
    E, K, D, F, act, bias = ((128, 8, 2048, 768, "swiglu", False) if model == "qwen3"
                             else (32, 4, 2880, 2880, "clamped_swiglu", True))
    k1, k2, k3 = jax.random.split(jax.random.key(T), 3)
    x = jax.random.normal(k2, (T, D), jnp.bfloat16)
    return (act, random_experts(k1, E, D, F, bias), x, *routing(k3, T, K, E, "uniform"))


def test_plan_tiles_layout():
    E, bm = 5, 8
    expert_A = jnp.array([3, 0, 3, 5, 0, 3, 3, 3, 3, 3, 3, 3, 2], jnp.int32)  # 5 = dropped
    p = plan_tiles(expert_A, E, bm)
    slot = np.asarray(p["slot_A"])
    te = np.asarray(p["tile_expert"])
    nt = int(p["num_tiles"][0])
    assert nt == 1 + 1 + 2  # experts 0, 2, 3 (9 rows -> 2 tiles); 1 and 4 own no tile
    assert p["M_pad"] % bm == 0 and p["M_pad"] >= nt * bm
    assert slot[3] == p["M_pad"]  # dropped
    real = slot[slot < p["M_pad"]]
    assert len(set(real.tolist())) == len(real)
    for a, e in enumerate(np.asarray(expert_A)):
        if e < E:
            assert te[slot[a] // bm] == e
    # Rows of one expert keep their order; the dropped assignment lands nowhere.
    assert slot[0] < slot[2] < slot[5] and slot[1] < slot[4]
    src = np.asarray(scatter_rows(p["slot_A"], jnp.arange(13, dtype=jnp.int32) + 1, p["M_pad"]))
    assert sorted(src[src > 0].tolist()) == [a + 1 for a in range(13) if a != 3]


@pytest.mark.parametrize("A,E,bm", [(1, 128, 16), (13, 5, 8), (512, 128, 16), (700, 32, 64)])
def test_plan_small_and_sorted_agree(A, E, bm, monkeypatch):
    """The compare-based plan (small layouts) and the sort-based one give the same layout."""
    rng = np.random.default_rng(A)
    expert_A = rng.integers(0, E + 1, A).astype(np.int32)  # E = dropped
    expert_A[: A // 3] = rng.integers(0, 2, A // 3)  # a couple of hot experts
    values = jnp.asarray(rng.normal(size=A), jnp.float32)
    small = plan_tiles(jnp.asarray(expert_A), E, bm)
    rows_small = scatter_rows(small["slot_A"], values, small["M_pad"])
    monkeypatch.setattr(gm, "SMALL_PLAN_MAX_ROWS", 0)
    big = plan_tiles(jnp.asarray(expert_A), E, bm)
    rows_big = scatter_rows(big["slot_A"], values, big["M_pad"])
    assert small["M_pad"] == big["M_pad"]
    for k in ("slot_A", "tile_expert", "num_tiles"):
        np.testing.assert_array_equal(np.asarray(small[k]), np.asarray(big[k]), err_msg=k)
    np.testing.assert_array_equal(np.asarray(rows_small), np.asarray(rows_big))


@pytest.mark.parametrize("cfg,nw,bias,scale", [
    (TileConfig(128, 64, stages=2, num_compute_wgs=2), 2, False, False),
    (TileConfig(64, 64, stages=3, num_compute_wgs=1), 1, True, True),
    (TileConfig(16, 64, stages=2, num_compute_wgs=1, swap=True), 2, True, False),
    (TileConfig(32, 128, stages=2, num_compute_wgs=2, swap=True), 1, False, True),
])
def test_grouped_matmul_interpret(cfg, nw, bias, scale):
    E, K, N, A = 4, 128, 128, 200
    ks = jax.random.split(jax.random.key(1), 8)
    ids = jax.random.randint(ks[0], (A,), 0, E)
    ids = jnp.where(ids == 1, 2, ids)  # expert 1 empty
    p = plan_tiles(ids, E, cfg.block_m)
    M = p["M_pad"]
    x = jax.random.normal(ks[1], (M, K), jnp.bfloat16)
    ws = [jax.random.normal(ks[2 + j], (E, K, N), jnp.bfloat16) / K**0.5 for j in range(nw)]
    bs = [jax.random.normal(ks[4 + j], (E, N), jnp.float32) for j in range(nw)] if bias else None
    sc = jax.random.uniform(ks[6], (M,), jnp.float32) if scale else None
    act = "clamped_swiglu" if nw == 2 else None
    with gpu_interpret_mode():
        out = grouped_matmul(x, ws, p["tile_expert"], p["num_tiles"], config=cfg, biases=bs,
                             row_scale=sc, activation=act, num_sms=2)
    e_M = np.repeat(np.asarray(p["tile_expert"]), cfg.block_m)
    vals = [jnp.einsum("mk,mkn->mn", x.astype(jnp.float32), w.astype(jnp.float32)[e_M])
            + (bs[j][e_M] if bias else 0.0) for j, w in enumerate(ws)]
    ref = apply_activation(act, *vals) if act else vals[0]
    if scale:
        ref = ref * sc[:, None]
    rows = int(p["num_tiles"][0]) * cfg.block_m  # rows past the used tiles are never written
    out = out.T if cfg.swap else out
    assert rel_err(out[:rows], ref[:rows]) <= 1e-2


@pytest.mark.parametrize("cfg,activation,bias,kind,T,valid", [
    (PREFILL, "swiglu", False, "uniform", 100, None),
    (PREFILL, "clamped_swiglu", True, "hot", 64, None),
    (PREFILL_1WG, "clamped_swiglu", True, "sparse", 37, 30),
    (DECODE, "swiglu", False, "sparse", 13, 11),
    (DECODE, "clamped_swiglu", True, "uniform", 5, None),
    (DECODE_2WG, "swiglu", True, "hot", 24, None),
])
def test_moe_layer_interpret(cfg, activation, bias, kind, T, valid):
    E, K, D, F = 8, 2, 128, 128
    k1, k2, k3 = jax.random.split(jax.random.key(T), 3)
    ex = random_experts(k1, E, D, F, bias)
    x = jax.random.normal(k2, (T, D), jnp.bfloat16)
    w, ids = routing(k3, T, K, E, kind)
    valid_T = None if valid is None else jnp.arange(T) < valid
    with gpu_interpret_mode():
        out = moe_experts_pallas(x, w, ids, ex, activation=activation, valid_T=valid_T,
                                 config=cfg, num_sms=2)
    ref = moe_experts_reference(f32(x), w, ids, f32(ex), activation=activation, valid_T=valid_T)
    assert out.shape == (T, D) and out.dtype == x.dtype
    assert rel_err(out, ref) <= 1e-2
    if valid is not None:
        assert np.all(np.asarray(out[valid:], np.float32) == 0.0)


def stacked_layers_case(seed: int, L: int, E: int, K: int, D: int, F: int, T: int):
    """A layer-stacked MoE case: L layers' experts ([E, ...] each, with biases), the same stacked
    [L, E, ...], bf16 tokens x [T, D], uniform routing weights and ids [T, K]."""
    keys = jax.random.split(jax.random.key(seed), L + 2)
    layers = [random_experts(k, E, D, F, True) for k in keys[:L]]
    stacked = {name: jnp.stack([ex[name] for ex in layers]) for name in layers[0]}
    x = jax.random.normal(keys[L], (T, D), jnp.bfloat16)
    w, ids = routing(keys[L + 1], T, K, E, "uniform")
    return layers, stacked, x, w, ids


@pytest.mark.parametrize("cfg", [PREFILL, DECODE])
def test_moe_layer_reads_a_layer_of_stacked_weights_in_place(cfg):
    """Experts stacked over 2 layers with a traced layer index give exactly what the layer's own
    weights give (the engine passes whole stacks so no slice of them is copied)."""
    L = 2
    layers, stacked, x, w, ids = stacked_layers_case(5, L, E=8, K=2, D=128, F=128, T=40)
    run = functools.partial(moe_experts_pallas, activation="clamped_swiglu", config=cfg, num_sms=2)
    with gpu_interpret_mode():
        from_stack = jax.jit(lambda l: run(x, w, ids, stacked, layer=l))(1)
        alone = run(x, w, ids, layers[1])
    np.testing.assert_array_equal(np.asarray(from_stack, np.float32), np.asarray(alone, np.float32))
    ref = moe_experts_reference(x, w, ids, stacked, activation="clamped_swiglu", layer=1)
    assert rel_err(from_stack, ref) <= 1e-2


def test_default_config_orientation():
    assert default_config(128, 2048, 768, 8).gate_up.swap
    assert not default_config(128, 2048, 768, 131072).gate_up.swap
    assert default_config(32, 2880, 2880, 65536).gate_up.block_n in (64, 128, 192)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["qwen3", "gpt_oss"])
@pytest.mark.parametrize("T", [1, 64, 2048])
def test_moe_layer_gpu(model, T):
    act, ex, x, w, ids = model_case(model, T)
    out = jax.jit(lambda *a: moe_experts_pallas(*a, activation=act))(x, w, ids, ex)
    ref = jax.jit(lambda *a: moe_experts_reference(*a, activation=act))(f32(x), w, ids, f32(ex))
    assert rel_err(out, ref) <= 1e-2
