"""The decode-size MoE layer (`pallas_kernels/moe_decode.py`) against the float32 reference.

CPU: the plan against numpy; the layer's real Mosaic GPU kernels in GPU interpret mode on small
shapes (E=6, D=F=128): a single token, ragged sizes with padding tokens, empty experts, every
token on one expert, no valid token, experts stacked over layers (called directly: the path is
opt-in); the dispatch by size under LP_JAX_MOE_DECODE_MAX_TOKENS (off when unset). GPU (marker
`gpu`): the model shapes at decode sizes, against the reference and the grouped layer.
"""

import functools

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import dispatch
from pallas_kernels.grouped_matmul import TileConfig
from pallas_kernels.interpret import gpu_interpret_mode
from pallas_kernels.moe import moe_experts_pallas
from pallas_kernels.moe_decode import decode_plan, moe_experts_decode, token_rows
from pallas_kernels.moe_reference import moe_experts_reference, random_experts
from pallas_kernels.moe_tuning import MoETileConfig, decode_config
from tests.test_moe_kernels import f32, model_case, rel_err, routing, stacked_layers_case


def tiles(T_pad, wgs=1):
    return MoETileConfig(gate_up=TileConfig(T_pad, 64 * wgs, stages=2, num_compute_wgs=wgs, swap=True),
                         down=TileConfig(T_pad, 128, stages=2, num_compute_wgs=wgs, swap=True))


def test_token_rows():
    assert [token_rows(t) for t in (1, 16, 17, 32, 33, 64)] == [16, 16, 32, 32, 64, 64]
    for bad in (0, 65):
        with pytest.raises(ValueError, match="1..64 tokens"):
            token_rows(bad)


def test_decode_plan_against_numpy():
    E, T, K, T_pad = 7, 5, 3, 16
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice([0, 2, 3, 6], K, replace=False) for _ in range(T)]).astype(np.int32)
    ids[4] = [1, 5, 4]  # token 4 alone routes to experts 1, 4, 5 ...
    w = rng.random((T, K)).astype(np.float32)
    valid = np.array([True, True, True, True, False])  # ... but it is padding: they stay inactive
    p = decode_plan(jnp.asarray(w), jnp.asarray(ids), E, T_pad, jnp.asarray(valid))
    S = min(E, T * K)
    active = sorted({int(e) for t in range(T) if valid[t] for e in ids[t]})
    assert int(p["num_active"][0]) == len(active) == 4
    assert np.asarray(p["expert_S"]).tolist()[:4] == active and p["expert_S"].shape == (S,)
    scale = np.asarray(p["scale_M"]).reshape(S, T_pad)
    want = np.zeros((S, T_pad), np.float32)
    for s, e in enumerate(active):
        for t in range(T):
            want[s, t] = w[t][ids[t] == e].sum() if valid[t] else 0.0
    np.testing.assert_array_equal(scale, want)


@pytest.mark.parametrize("activation,bias,kind,T,valid,K,wgs", [
    ("swiglu", False, "uniform", 1, None, 2, 1),  # a single token
    ("clamped_swiglu", True, "sparse", 13, 11, 2, 1),  # ragged, padding tokens, empty experts
    ("swiglu", True, "one", 20, None, 1, 1),  # every token on one expert
    ("clamped_swiglu", False, "hot", 40, 33, 2, 2),  # 64-token tile, two compute warpgroups
])
def test_decode_layer_interpret(activation, bias, kind, T, valid, K, wgs):
    E, D, F = 6, 128, 128
    k1, k2, k3 = jax.random.split(jax.random.key(T), 3)
    ex = random_experts(k1, E, D, F, bias)
    x = jax.random.normal(k2, (T, D), jnp.bfloat16)
    if kind == "one":
        w, ids = jax.random.uniform(k3, (T, K)), jnp.full((T, K), 4, jnp.int32)
    else:
        w, ids = routing(k3, T, K, E, kind)
    valid_T = None if valid is None else jnp.arange(T) < valid
    with gpu_interpret_mode():
        out = moe_experts_decode(x, w, ids, ex, activation=activation, valid_T=valid_T,
                                 config=tiles(token_rows(T), wgs), num_sms=2)
    ref = moe_experts_reference(f32(x), w, ids, f32(ex), activation=activation, valid_T=valid_T)
    assert out.shape == (T, D) and out.dtype == x.dtype
    assert rel_err(out, ref) <= 1e-2
    if valid is not None:
        assert np.all(np.asarray(out[valid:], np.float32) == 0.0)


def test_decode_layer_no_valid_token_and_stacked_layers():
    """No valid token: no expert is active, no tile runs, the output is exactly 0. Experts
    stacked over layers with a traced layer index: the layer's own weights' result exactly
    (every token valid there, so the layer alone runs what the no-valid-token call compiled)."""
    L, E, T = 2, 6, 3
    layers, stacked, x, w, ids = stacked_layers_case(9, L, E, K=2, D=128, F=128, T=T)
    run = jax.jit(functools.partial(moe_experts_decode, activation="clamped_swiglu", config=tiles(16), num_sms=2))
    all_valid = jnp.ones((T,), bool)
    with gpu_interpret_mode():
        none = run(x, w, ids, layers[0], valid_T=jnp.zeros((T,), bool))
        alone = run(x, w, ids, layers[1], valid_T=all_valid)
        from_stack = run(x, w, ids, stacked, valid_T=all_valid, layer=jnp.int32(1))
    assert np.all(np.asarray(none, np.float32) == 0.0)
    np.testing.assert_array_equal(np.asarray(from_stack, np.float32), np.asarray(alone, np.float32))
    ref = moe_experts_reference(f32(x), w, ids, f32(layers[1]), activation="clamped_swiglu", valid_T=all_valid)
    assert rel_err(from_stack, ref) <= 1e-2


def test_decode_config_fits_shared_memory():
    for E, D, F, K in ((128, 2048, 768, 8), (32, 2880, 2880, 4)):
        for T in (1, 8, 32, 64):
            cfg = decode_config(E, D, F, T * K, token_rows(T), "NVIDIA H200")
            for c, nw in ((cfg.gate_up, 2), (cfg.down, 1)):
                assert c.swap and c.block_m == token_rows(T) and c.smem_bytes(nw) <= 220 * 1024
                c.validate(D if nw == 2 else F, F if nw == 2 else D)


def test_dispatch_is_grouped_unless_the_decode_path_is_turned_on(monkeypatch):
    """Unset (the default until the H200 run) or 0: the grouped layer at every size, key "pallas";
    N in [1, 64]: the decode layer up to N tokens, N in the executables' key; else a ValueError."""
    kw = dict(D=128, F=128, H=4, N=2, A=64, Z=16, dtype=jnp.float32, backend="pallas")
    for env in (None, "0"):
        if env is None:
            monkeypatch.delenv("LP_JAX_MOE_DECODE_MAX_TOKENS", raising=False)
        else:
            monkeypatch.setenv("LP_JAX_MOE_DECODE_MAX_TOKENS", env)
        assert [dispatch.moe_path(T, 128, 128, "pallas") for T in (1, 64)] == ["grouped", "grouped"]
        assert dispatch.serving_backends(**kw)[0] == "pallas"
    assert dispatch.moe_path(1, 128, 128, "reference") == "reference"
    for limit in ("64", "8"):
        monkeypatch.setenv("LP_JAX_MOE_DECODE_MAX_TOKENS", limit)
        n = int(limit)
        assert [dispatch.moe_path(T, 128, 128, "pallas") for T in (1, n, n + 1)] == ["decode", "decode", "grouped"]
        assert dispatch.moe_path(1, 128, 128, "reference") == "reference"
        assert dispatch.moe_path(1, 128, 128, "pallas", decode_max_tokens=0) == "grouped"
        assert dispatch.serving_backends(**kw)[0] == f"pallas, decode <= {n} tokens"
    assert dispatch.serving_backends(**{**kw, "backend": "reference"})[0] == "reference"
    for bad in ("65", "-1", "eight", " 8"):
        monkeypatch.setenv("LP_JAX_MOE_DECODE_MAX_TOKENS", bad)
        with pytest.raises(ValueError, match=r"LP_JAX_MOE_DECODE_MAX_TOKENS must be an integer in \[0, 64\]"):
            dispatch.moe_path(1, 128, 128, "pallas")


def test_dispatch_runs_the_path_it_picks(monkeypatch):
    """moe_experts calls the decode layer up to the limit, the grouped layer above and by default
    (stand-ins record which; the kernels themselves are tested above)."""
    from pallas_kernels import moe, moe_decode
    called = []
    for module, name in ((moe_decode, "moe_experts_decode"), (moe, "moe_experts_pallas")):
        monkeypatch.setattr(module, name, lambda x, *a, _n=name, **kw: called.append(_n) or x)
    ex = random_experts(jax.random.key(0), 6, 128, 128, False)

    def run(T, limit=None):
        x = jnp.ones((T, 128), jnp.bfloat16)
        dispatch.moe_experts(x, jnp.ones((T, 2)), jnp.zeros((T, 2), jnp.int32), ex, backend="pallas",
                             decode_max_tokens=limit)
        return called.pop()

    monkeypatch.delenv("LP_JAX_MOE_DECODE_MAX_TOKENS", raising=False)
    assert [run(1), run(64), run(2, 2), run(3, 2)] == ["moe_experts_pallas", "moe_experts_pallas",
                                                       "moe_experts_decode", "moe_experts_pallas"]
    monkeypatch.setenv("LP_JAX_MOE_DECODE_MAX_TOKENS", "64")
    assert [run(64), run(65), run(3, 0)] == ["moe_experts_decode", "moe_experts_pallas", "moe_experts_pallas"]


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["qwen3", "gpt_oss"])
@pytest.mark.parametrize("T", [1, 8, 33, 64])
def test_decode_layer_gpu(model, T):
    act, ex, x, w, ids = model_case(model, T)
    valid_T = jnp.arange(T) < max(1, T - 3)
    out = jax.jit(lambda *a: moe_experts_decode(*a, activation=act, valid_T=valid_T))(x, w, ids, ex)
    ref = jax.jit(lambda *a: moe_experts_reference(*a, activation=act, valid_T=valid_T))(f32(x), w, ids, f32(ex))
    grouped = jax.jit(lambda *a: moe_experts_pallas(*a, activation=act, valid_T=valid_T))(x, w, ids, ex)
    assert rel_err(out, ref) <= 1e-2
    assert rel_err(out, grouped) <= 1e-2


def test_decode_layer_runs_fewer_xla_ops_than_the_grouped_layer():
    """The compiled layer (CPU, the kernels as stand-ins: scripts/count_moe_ops.py) at model
    shapes: the decode path runs fewer operations around the same two kernels and no scatter."""
    from tests.script_loader import load_script
    count = load_script("count_moe_ops")
    for model, T in (("qwen3_30b_a3b", 8), ("gpt_oss_20b", 16)):
        grouped = count.layer_ops("grouped", *count.MODELS[model], T)
        decode = count.layer_ops("decode", *count.MODELS[model], T)
        assert decode.get("custom-call") == grouped.get("custom-call") == 2
        assert "scatter" not in decode
        assert sum(decode.values()) < sum(grouped.values()), (decode, grouped)
