"""Random initialisation: deterministic, and scaled so that deep bf16 stacks stay finite."""

import jax.numpy as jnp
import numpy as np

from lp_jax.cli import main as cli_main
from lp_jax.model import init_params, reference_logits
from lp_jax.model.config import get_preset
from lp_jax.model.init import init_weight
from lp_jax.model.spec import layer_spec


def test_init_is_deterministic_per_weight():
    cfg = get_preset("tiny-qwen3-moe")
    spec = layer_spec(cfg)["w_gate"]
    a = init_weight(spec, seed=1, layer=3, name="w_gate", dtype=jnp.float32)
    b = init_weight(spec, seed=1, layer=3, name="w_gate", dtype=jnp.float32)
    c = init_weight(spec, seed=1, layer=2, name="w_gate", dtype=jnp.float32)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs(float(jnp.std(a)) * cfg.hidden_size ** 0.5 - 1) < 0.05  # std 1/sqrt(fan_in)


def test_48_bf16_layers_stay_finite():
    # Qwen3-30B-A3B's depth (48 layers) and routing, narrowed so it runs on a CPU.
    cfg = get_preset("qwen3-30b-a3b").replace(
        name="narrow-48", vocab_size=1024, hidden_size=128, num_heads=4, num_kv_heads=2, head_dim=32,
        num_experts=16, num_experts_per_tok=4, moe_intermediate_size=64)
    params = init_params(cfg, seed=0, dtype=jnp.bfloat16)
    logits = reference_logits(cfg, params, jnp.arange(64) * 13 % cfg.vocab_size)
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert 0.1 < float(jnp.std(logits)) < 100


def test_info_command(capsys):
    assert cli_main(["info", "--model", "gpt-oss-20b"]) == 0
    out = capsys.readouterr().out
    assert "20.91B" in out and "3.61B" in out and "MiB" in out
    assert cli_main(["info", "--model", "nope"]) == 2
    assert "unknown model preset 'nope'" in capsys.readouterr().err


def test_stacked_init_equals_per_layer_init():
    cfg = get_preset("tiny-gpt-oss")
    per_layer = init_params(cfg, seed=4)
    stacked = init_params(cfg, seed=4, stacked=True)
    for name, stack in stacked["layers"].items():
        assert stack.shape[0] == cfg.num_layers
        for i, lp in enumerate(per_layer["layers"]):
            assert np.array_equal(stack[i], lp[name]), (name, i)
    assert np.array_equal(stacked["embed"], per_layer["embed"])
