"""Checkpoint loading and saving: MXFP4 dequantisation against transformers, the published and
save_pretrained layouts, sharded checkpoints, config.json mapping, the orbax round trip, and the
errors a bad checkpoint must raise before anything is built."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import lp_jax.checkpoint.hf as ckpt
from lp_jax.checkpoint import common, config_from_hf, dequantize_mxfp4, load_hf, orbax, restore, save
from lp_jax.engine.executor import stack_layers
from lp_jax.model.config import GPT_OSS_20B, QWEN3_8B, QWEN3_30B_A3B

FIXTURES = Path(__file__).parent / "fixtures"
QWEN3_MOE = FIXTURES / "tiny-qwen3-moe"


def leaves(params) -> dict:
    return dict(common.leaves(params))


# --- MXFP4 ------------------------------------------------------------------------------------

def test_dequantize_mxfp4_matches_transformers():
    golden = np.load(FIXTURES / "mxfp4_golden.npz")
    ours = dequantize_mxfp4(golden["blocks"], golden["scales"])
    assert ours.dtype == jnp.bfloat16
    # transformers returns [..., columns, rows]; ours keeps the packed [..., rows, columns].
    ours = np.swapaxes(ours.astype(np.float32), -1, -2)
    expected = golden["dequantized"]
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(np.signbit(ours), np.signbit(expected))  # -0.0 codes too
    assert np.isinf(expected).any() and (np.abs(expected[expected != 0]) < 1e-37).any()  # extremes covered


def test_dequantize_mxfp4_layout_by_hand():
    # One group of 32: byte 0 = 0x21 holds code 1 (0.5, low nibble, first) then 2 (1.0).
    blocks = np.zeros((1, 16), np.uint8)
    blocks[0, 0], blocks[0, 15] = 0x21, 0xF8  # last byte: -0.0 then -6
    out = dequantize_mxfp4(blocks, np.array([128], np.uint8), dtype=np.float32)  # scale 2^1
    assert out.shape == (32,)
    assert out[0] == 1.0 and out[1] == 2.0 and out[31] == -12.0 and np.signbit(out[30])


def test_dequantize_mxfp4_rejects_mismatched_scales():
    with pytest.raises(ValueError, match="blocks .* and scales .* do not match"):
        dequantize_mxfp4(np.zeros((4, 2, 16), np.uint8), np.zeros((4, 3), np.uint8))


def test_published_mxfp4_layout_loads_to_the_same_weights():
    # The same tiny GPT-OSS in save_pretrained's float layout and in openai's MXFP4 layout.
    _, dense = load_hf(FIXTURES / "tiny-gpt-oss")
    _, packed = load_hf(FIXTURES / "tiny-gpt-oss-mxfp4")
    dense, packed = leaves(dense), leaves(packed)
    assert dense.keys() == packed.keys()
    for path in dense:
        np.testing.assert_array_equal(packed[path], dense[path], err_msg=str(path))


# --- layouts and sharding ---------------------------------------------------------------------

def test_qwen3_moe_per_expert_layout_maps_to_stacked_experts():
    config, params = load_hf(QWEN3_MOE)
    tensors = load_file(QWEN3_MOE / "model.safetensors")
    layer = params["layers"][2]
    np.testing.assert_array_equal(layer["w_gate"][5], tensors["model.layers.2.mlp.experts.5.gate_proj.weight"].T)
    np.testing.assert_array_equal(layer["w_down"][7], tensors["model.layers.2.mlp.experts.7.down_proj.weight"].T)
    np.testing.assert_array_equal(layer["router"], tensors["model.layers.2.mlp.gate.weight"].T)
    q = tensors["model.layers.2.self_attn.q_proj.weight"]  # [H*A, D], head-major rows
    np.testing.assert_array_equal(layer["wq"][:, 1, :], q[config.head_dim:2 * config.head_dim].T)


def test_gpt_oss_gate_up_interleaving_is_split():
    _, params = load_hf(FIXTURES / "tiny-gpt-oss")
    tensors = load_file(FIXTURES / "tiny-gpt-oss" / "model.safetensors")
    fused = tensors["model.layers.1.mlp.experts.gate_up_proj"]  # [E, D, 2F]
    bias = tensors["model.layers.1.mlp.experts.gate_up_proj_bias"]  # [E, 2F]
    layer = params["layers"][1]
    np.testing.assert_array_equal(layer["w_gate"], fused[..., 0::2])
    np.testing.assert_array_equal(layer["w_up"], fused[..., 1::2])
    np.testing.assert_array_equal(layer["b_gate"], bias[:, 0::2])
    np.testing.assert_array_equal(layer["b_up"], bias[:, 1::2])


def test_sharded_checkpoint_loads_every_shard():
    path = FIXTURES / "tiny-qwen3"
    weight_map = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(weight_map.values())) >= 2 and not (path / "model.safetensors").exists()
    config, params = load_hf(path)
    assert config.tie_word_embeddings and "lm_head" not in params
    for name, ours in (("model.embed_tokens.weight", params["embed"]),
                       ("model.norm.weight", params["final_norm"]),
                       ("model.layers.3.mlp.down_proj.weight", params["layers"][3]["w_down"].T)):
        with safe_open(path / weight_map[name], "np") as f:
            np.testing.assert_array_equal(ours, f.get_tensor(name))


def test_dtype_defaults_to_config_and_can_be_requested():
    _, params = load_hf(QWEN3_MOE)
    assert {x.dtype for x in leaves(params).values()} == {jnp.dtype(jnp.float32)}
    _, params = load_hf(QWEN3_MOE, dtype=jnp.bfloat16)
    assert {x.dtype for x in leaves(params).values()} == {jnp.dtype(jnp.bfloat16)}


# --- config.json mapping ----------------------------------------------------------------------
# The model-defining keys of the published config.json / generation_config.json files.

QWEN3_30B_A3B_HF = {
    "model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048, "num_hidden_layers": 48,
    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "hidden_act": "silu",
    "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
    "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "max_position_embeddings": 40960,
    "max_window_layers": 48, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
    "sliding_window": None, "use_sliding_window": False, "attention_bias": False,
    "tie_word_embeddings": False, "eos_token_id": 151645, "torch_dtype": "bfloat16",
}
GPT_OSS_20B_HF = {
    "model_type": "gpt_oss", "vocab_size": 201088, "hidden_size": 2880, "num_hidden_layers": 24,
    "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 2880,
    "num_local_experts": 32, "num_experts_per_tok": 4, "experts_per_token": 4, "attention_bias": True,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "sliding_window": 128,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 150000,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                     "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False},
    "swiglu_limit": 7.0, "tie_word_embeddings": False, "eos_token_id": 200002,
    "quantization_config": {"quant_method": "mxfp4"},
}
QWEN3_8B_HF = {
    "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 4096, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
    "intermediate_size": 12288, "max_position_embeddings": 40960, "max_window_layers": 36,
    "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
    "use_sliding_window": False, "attention_bias": False, "tie_word_embeddings": False,
    "eos_token_id": 151645, "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize("hf,generation_eos,preset", [
    (QWEN3_30B_A3B_HF, [151645, 151643], QWEN3_30B_A3B),
    (GPT_OSS_20B_HF, [200002, 199999, 200012], GPT_OSS_20B),
    (QWEN3_8B_HF, [151645, 151643], QWEN3_8B),
])
def test_published_configs_map_to_presets(hf, generation_eos, preset):
    config = config_from_hf(hf, {"eos_token_id": generation_eos}, name=preset.name)
    assert config == preset


def test_published_mxfp4_tensor_shapes():
    # openai/gpt-oss-20b: gate_up_proj_blocks [32, 5760, 90, 16], scales [32, 5760, 90];
    # down_proj_blocks [32, 2880, 90, 16], scales [32, 2880, 90].
    plan = ckpt.conversion_plan(GPT_OSS_20B, mxfp4=True)
    shapes = {name: shape for rule in plan for name, shape in zip(rule.sources, rule.shapes)}
    prefix = "model.layers.23.mlp.experts."
    assert shapes[prefix + "gate_up_proj_blocks"] == (32, 5760, 90, 16)
    assert shapes[prefix + "gate_up_proj_scales"] == (32, 5760, 90)
    assert shapes[prefix + "down_proj_blocks"] == (32, 2880, 90, 16)
    assert shapes[prefix + "gate_up_proj_bias"] == (32, 5760)
    assert shapes["model.layers.0.self_attn.sinks"] == (64,)


def test_unsupported_architecture_is_named():
    with pytest.raises(ValueError, match="unsupported model_type 'llama'.*qwen3_moe, gpt_oss, qwen3"):
        config_from_hf({"model_type": "llama"})


# --- bad checkpoints --------------------------------------------------------------------------

@pytest.fixture
def nothing_read(monkeypatch):
    """Fails the test if any weight is read: errors must come from validation, before building."""
    def read_weights(*args, **kwargs):
        raise AssertionError("weights were read before the checkpoint was validated")
    monkeypatch.setattr(ckpt, "read_weights", read_weights)


def broken_copy(tmp_path: Path, edit_tensors=None, edit_config=None) -> Path:
    """A copy of the tiny Qwen3-MoE checkpoint with its tensors and/or config.json edited."""
    dst = tmp_path / "broken"
    dst.mkdir()
    tensors = load_file(QWEN3_MOE / "model.safetensors")
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, dst / "model.safetensors")
    config = json.loads((QWEN3_MOE / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_missing_tensor_is_named(tmp_path, nothing_read):
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    path = broken_copy(tmp_path, lambda t: t.pop(name))
    with pytest.raises(ValueError, match=f"missing tensor.*'{name}'"):
        load_hf(path)


def test_extra_tensor_is_named(tmp_path, nothing_read):
    name = "model.layers.0.mlp.shared_expert.gate_proj.weight"
    path = broken_copy(tmp_path, lambda t: t.update({name: np.zeros((4, 64), np.float32)}))
    with pytest.raises(ValueError, match=f"unexpected tensor.*'{name}'"):
        load_hf(path)


def test_benign_rotary_table_is_ignored(tmp_path):
    name = "model.layers.0.self_attn.rotary_emb.inv_freq"
    path = broken_copy(tmp_path, lambda t: t.update({name: np.ones(8, np.float32)}))
    config, params = load_hf(path)
    assert len(params["layers"]) == config.num_layers


def test_misshaped_tensor_is_named_with_both_shapes(tmp_path, nothing_read):
    name = "model.layers.1.self_attn.k_proj.weight"
    path = broken_copy(tmp_path, lambda t: t.update({name: np.zeros((48, 64), np.float32)}))
    with pytest.raises(ValueError, match=rf"'{name}'.*shape \(48, 64\); expected \(32, 64\)"):
        load_hf(path)


def test_wrong_tensor_dtype_is_named(tmp_path, nothing_read):
    name = "model.norm.weight"
    path = broken_copy(tmp_path, lambda t: t.update({name: t[name].astype(np.int32)}))
    with pytest.raises(ValueError, match=f"'{name}'.*dtype I32; expected BF16 or F16 or F32"):
        load_hf(path)


def test_unsupported_requested_dtype(tmp_path, nothing_read):
    with pytest.raises(ValueError, match="unsupported dtype int8"):
        load_hf(QWEN3_MOE, dtype=jnp.int8)
    path = broken_copy(tmp_path, edit_config=lambda c: c.update(dtype="auto"))
    with pytest.raises(ValueError, match="unsupported dtype 'auto'"):
        load_hf(path)


def test_unsupported_architecture_in_checkpoint(tmp_path, nothing_read):
    path = broken_copy(tmp_path, edit_config=lambda c: c.update(model_type="mixtral"))
    with pytest.raises(ValueError, match="unsupported model_type 'mixtral'"):
        load_hf(path)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_damaged_file_is_named(tmp_path, nothing_read, damage):
    path = broken_copy(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    data = data[:len(data) // 2] if damage == "truncate" else data[:8] + b"{not json" + data[17:]
    (path / "model.safetensors").write_bytes(data)
    with pytest.raises(ValueError, match=f"cannot read safetensors file .*{path.name}/model.safetensors"):
        load_hf(path)


def test_damaged_shard_is_named(tmp_path, nothing_read):
    path = tmp_path / "sharded"
    shutil.copytree(FIXTURES / "tiny-qwen3", path)
    last = sorted(path.glob("model-*.safetensors"))[-1]
    last.write_bytes(last.read_bytes()[:-100])
    with pytest.raises(ValueError, match=f"cannot read safetensors file .*{last.name}"):
        load_hf(path)


def test_shard_missing_a_listed_tensor_is_named(tmp_path, nothing_read):
    path = tmp_path / "sharded"
    shutil.copytree(FIXTURES / "tiny-qwen3", path)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="'model.norm.weight' is listed .* but that file does not hold it"):
        load_hf(path)


# --- orbax ------------------------------------------------------------------------------------

def test_orbax_round_trip(tmp_path):
    config, params = load_hf(FIXTURES / "tiny-gpt-oss", dtype=jnp.bfloat16)
    params["final_norm"] = params["final_norm"].astype(jnp.float32)  # mixed dtypes survive too
    save(tmp_path / "ckpt", config, params)
    config2, params2 = restore(tmp_path / "ckpt")
    assert config2 == config
    ours, theirs = leaves(params), leaves(params2)
    assert ours.keys() == theirs.keys()
    for path, x in ours.items():
        assert isinstance(theirs[path], jax.Array) and theirs[path].dtype == x.dtype, path
        np.testing.assert_array_equal(np.asarray(theirs[path]), np.asarray(x), err_msg=str(path))


def test_orbax_save_checks_params_and_refuses_to_overwrite(tmp_path):
    config, params = load_hf(QWEN3_MOE)
    del params["layers"][3]["wq"]
    with pytest.raises(ValueError, match="lacks weight.*layers.3.wq"):
        save(tmp_path / "a", config, params)
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        save(tmp_path / "b", config, load_hf(QWEN3_MOE)[1])


def test_orbax_restore_checks_shapes_against_config(tmp_path):
    config, params = load_hf(QWEN3_MOE)
    save(tmp_path / "ckpt", config, params)
    stored = json.loads((tmp_path / "ckpt" / orbax.CONFIG_FILE).read_text())
    stored["vocab_size"] = 256
    (tmp_path / "ckpt" / orbax.CONFIG_FILE).write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"weight embed has shape \(512, 64\); expected \(256, 64\)"):
        restore(tmp_path / "ckpt")


# --- device memory of a load ------------------------------------------------------------------

def _live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


def test_stacked_load_peaks_at_the_weights_plus_one_layer_weight(monkeypatch):
    """Live device bytes before each in-place write (the weight in transit alive, the stacks
    allocated) never exceed the weights + one layer's largest weight; loading per layer and
    stacking afterwards (what the engine used to do) holds both copies. Same values both ways."""
    peaks, write = [], common._write_layer

    def measured(stack, layer, x):
        peaks.append(_live_bytes() - base)
        return write(stack, layer, x)

    monkeypatch.setattr(common, "_write_layer", measured)
    base = _live_bytes()
    config, stacked = load_hf(QWEN3_MOE, stacked=True)
    weights = sum(x.nbytes for x in jax.tree.leaves(stacked))
    largest = max(x.nbytes for x in stacked["layers"].values()) // config.num_layers
    assert len(peaks) == len(stacked["layers"]) * config.num_layers  # every layer weight written in place
    assert max(peaks) <= weights + largest, (max(peaks), weights, largest)

    _, per_layer = load_hf(QWEN3_MOE)
    for name, stack in stacked["layers"].items():
        np.testing.assert_array_equal(stack, np.stack([lp[name] for lp in per_layer["layers"]]), err_msg=name)
    base = _live_bytes() - sum(x.nbytes for x in jax.tree.leaves(per_layer))
    restacked = stack_layers(per_layer["layers"])
    assert _live_bytes() - base > weights + largest  # the old way: per-layer copies and their stack at once
    del restacked

