"""The parts of tensor / expert parallelism that need no second device: the sharding rules read
from the weights' declarations, the per-device byte counts, the refusals (tp x ep against the
model and the devices), the multi-process flags and the CLI options. The split engine itself is
tested on forced host devices in test_parallel_engine.py."""

from __future__ import annotations

import pytest
from jax.sharding import PartitionSpec as P

from lp_jax import cli
from lp_jax.engine.config import EngineConfig
from lp_jax.engine.memory import weight_bytes
from lp_jax.model.config import QWEN3_30B_A3B, TINY_GPT_OSS, TINY_QWEN3, TINY_QWEN3_MOE
from lp_jax.parallel.collectives import AllReduceCost, fit_all_reduce, layer_all_reduce_s
from lp_jax.parallel.layout import (POOL_AXES, Layout, check_devices, check_parallel, make_layout, shard_bytes,
                                    stacked_layer_axes)
from lp_jax.parallel.multihost import check_distributed


def test_rules_split_heads_kv_pools_experts_and_expert_hidden():
    layout = Layout(tp=2, ep=4)
    axes = stacked_layer_axes(TINY_GPT_OSS)
    assert layout.spec(axes["wq"]) == P(None, None, "tensor", None)
    assert layout.spec(axes["wo"]) == P(None, "tensor", None, None)
    assert layout.spec(axes["sinks"]) == P(None, "tensor")
    assert layout.spec(axes["w_gate"]) == P(None, "expert", None, "tensor")
    assert layout.spec(axes["w_down"]) == P(None, "expert", "tensor", None)
    assert layout.spec(axes["b_down"]) == P(None, "expert", None)
    # The router is replicated although it declares an experts axis (every device routes every token).
    assert layout.spec(axes["router"]) == P(None, None, None)
    assert layout.spec(axes["router_bias"]) == P(None, None)
    assert layout.spec(POOL_AXES) == P(None, None, None, "tensor", None)
    # A mesh axis of size 1 splits nothing.
    assert Layout(tp=1, ep=2).spec(axes["w_gate"]) == P(None, "expert", None, None)


def test_bytes_per_device():
    b = 2
    assert shard_bytes(QWEN3_30B_A3B, 1, 1, b) == weight_bytes(QWEN3_30B_A3B, "bfloat16")
    whole, half = shard_bytes(QWEN3_30B_A3B, 1, 1, b), shard_bytes(QWEN3_30B_A3B, 2, 1, b)
    replicated = b * (QWEN3_30B_A3B.embedding_params() + QWEN3_30B_A3B.unembedding_params()
                      + QWEN3_30B_A3B.num_layers * QWEN3_30B_A3B.router_params())
    assert half < whole / 2 + replicated and half > whole / 2  # everything else halves
    assert shard_bytes(QWEN3_30B_A3B, 1, 2, b) > half  # EP splits only the experts


@pytest.mark.parametrize("model,tp,ep,words", [
    (TINY_QWEN3_MOE, 4, 1, "tp=4 does not divide tiny-qwen3-moe's 2 KV heads; tp must be one of [1, 2]"),
    (TINY_QWEN3_MOE, 1, 3, "ep=3 does not divide tiny-qwen3-moe's 8 experts"),
    (TINY_QWEN3, 1, 2, "tiny-qwen3 is dense"),
    (TINY_QWEN3_MOE, 0, 1, "tp must be an integer >= 1"),
])
def test_impossible_splits_are_refused_by_name(model, tp, ep, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_parallel(model, tp, ep)


def test_a_split_must_match_the_devices():
    with pytest.raises(ValueError, match="tp x ep = 2 x 2 = 4 devices, but JAX sees 2"):
        check_devices(2, 2, num_devices=2)
    check_devices(2, 2, num_devices=4)
    check_devices(1, 1, num_devices=8)  # one device of many: no mesh


def test_a_split_is_refused_before_anything_is_built():
    import lp_jax

    with pytest.raises(ValueError, match="tp must be an integer >= 1"):
        EngineConfig(tp=0)
    with pytest.raises(ValueError, match="tp=4 does not divide"):
        EngineConfig(tp=4).check_model(TINY_QWEN3_MOE)
    # This process has one device: tp=2 does not match it (refused before weights are made).
    with pytest.raises(ValueError, match="JAX sees 1"):
        lp_jax.LLM(TINY_QWEN3_MOE, tp=2, max_model_len=64)
    assert make_layout(TINY_QWEN3_MOE).mesh is None  # tp = ep = 1: no mesh, nothing changes


@pytest.mark.parametrize("args,words", [
    (("127.0.0.1:1234", 2, None), "missing: --process-id"),
    (("localhost", 2, 0), "HOST:PORT"),
    (("127.0.0.1:1234", 0, 0), "--num-processes must be an integer >= 1"),
    (("127.0.0.1:1234", 2, 2), r"--process-id must be an integer in \[0, 1\]"),
])
def test_multi_process_flags_are_checked(args, words):
    with pytest.raises(ValueError, match=words):
        check_distributed(*args)


def test_no_flags_means_one_process():
    assert check_distributed(None, None, None) is False


def test_cli_takes_tp_and_ep_on_every_command(capsys):
    assert (cli.build_parser().parse_args(["serve", "--tp", "2"]).tp) == 2
    for command in ("generate", "bench", "compare"):
        args = cli.build_parser().parse_args([command, "--tp", "2", "--ep", "4", "--coordinator-address",
                                              "10.0.0.1:1234", "--num-processes", "2", "--process-id", "1"])
        assert (args.tp, args.ep, args.num_processes, args.process_id) == (2, 4, 2, 1)
    assert cli.main(["info", "--model", "qwen3-30b-a3b", "--tp", "2"]) == 0
    # Half the model plus the other half of the replicated embedding and LM head (29.03 GiB).
    assert f"per device at tp=2, ep=1 (bf16): {shard_bytes(QWEN3_30B_A3B, 2, 1, 2) / 2**30:.2f} GiB" \
        in capsys.readouterr().out
    assert cli.main(["info", "--model", "qwen3-30b-a3b", "--tp", "3"]) == 2
    assert "tp=3 does not divide" in capsys.readouterr().err
    # Refused before an engine starts, with the reason.
    assert cli.main(["generate", "--tp", "2"]) == 2
    assert "JAX sees 1" in capsys.readouterr().err
    assert cli.main(["generate", "--coordinator-address", "x:1"]) == 2
    assert "missing: --num-processes, --process-id" in capsys.readouterr().err


def test_all_reduce_fit_recovers_latency_and_bus_bandwidth():
    """Ring all-reduce over 4 devices: 2 (n-1)/n x bytes cross each link."""
    truth = AllReduceCost(4, latency_s=20e-6, bus_Bps=100e9)
    samples = [(b, truth.seconds(b)) for b in (1 << 12, 1 << 20, 1 << 26)]
    fit = fit_all_reduce(4, samples)
    assert fit.latency_s == pytest.approx(20e-6, rel=1e-6) and fit.bus_Bps == pytest.approx(100e9, rel=1e-6)
    assert truth.seconds(1 << 26) == pytest.approx(20e-6 + 1.5 * (1 << 26) / 100e9)
    assert AllReduceCost(1, 1.0, 1.0).seconds(1 << 30) == 0.0  # one device: no collective
    with pytest.raises(ValueError, match="at least two sizes"):
        fit_all_reduce(4, samples[:1])
    with pytest.raises(ValueError, match="do not grow with size"):
        fit_all_reduce(4, [(1 << 12, 1e-3), (1 << 20, 1e-4)])


def test_a_layer_all_reduces_after_attention_over_tp_and_after_the_moe_over_all_devices():
    cost = AllReduceCost(4, latency_s=10e-6, bus_Bps=100e9)
    rows, D, b = 64, TINY_QWEN3_MOE.hidden_size, 2
    nbytes = rows * D * b
    assert layer_all_reduce_s(cost, TINY_QWEN3_MOE, 2, 2, rows, b) == pytest.approx(
        (10e-6 + 1.0 * nbytes / 100e9) + (10e-6 + 1.5 * nbytes / 100e9))
    assert layer_all_reduce_s(cost, TINY_QWEN3_MOE, 1, 4, rows, b) == pytest.approx(10e-6 + 1.5 * nbytes / 100e9)
    assert layer_all_reduce_s(cost, TINY_QWEN3, 2, 1, rows, b) == pytest.approx(2 * (10e-6 + nbytes / 100e9))
    assert layer_all_reduce_s(cost, TINY_QWEN3_MOE, 1, 1, rows, b) == 0.0
