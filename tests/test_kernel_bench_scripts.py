"""The kernel benches' CPU-checkable parts: vLLM's routing-align step (ours, array-API code) against a
numpy loop, the peer's configuration choice, the scripts' argument errors, and a dry run of
bench_moe / bench_attention end to end with our kernels replaced by the references (the GPU-only
peers fail on the CPU and must be recorded as null with a reason, not stop the run).
GPU (marker `gpu`): vLLM's kernel (from .peers/) and the Triton activation against the reference."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.script_loader import SCRIPTS, load_script

sys.path.insert(0, str(SCRIPTS))  # the scripts import each other by name
vllm_moe = load_script("vllm_moe")


def align_loop(ids_TK, block_m, E):
    """Independent reference: per expert in id order, its assignments in flat order, padded."""
    flat = np.asarray(ids_TK).reshape(-1)
    A = flat.size
    rows, experts = [], []
    for e in range(E):
        mine = [a for a in range(A) if flat[a] == e]
        if not mine:
            continue
        n = -(-len(mine) // block_m) * block_m
        rows += mine + [A] * (n - len(mine))
        experts += [e] * (n // block_m)
    return rows, experts


@pytest.mark.parametrize("T,K,E,block_m,kind", [
    (1, 8, 128, 16, "uniform"), (5, 2, 4, 16, "uniform"), (64, 8, 128, 64, "uniform"),
    (33, 4, 32, 16, "one_hot"),  # every assignment on one expert: the others empty
    (16, 4, 8, 128, "skewed"),  # groups far smaller than a block
    (256, 2, 4, 32, "skewed"),  # many full blocks, ragged tails
])
def test_align_block_size_matches_loop(T, K, E, block_m, kind):
    rng = np.random.default_rng(T * 1000 + E)
    if kind == "uniform":
        ids = np.stack([rng.choice(E, K, replace=False) for _ in range(T)])
    elif kind == "one_hot":
        ids = np.full((T, K), E - 1)
    else:
        ids = rng.choice(E, (T, K), p=np.r_[0.7, np.full(E - 1, 0.3 / (E - 1))])
    sorted_ids, expert_ids, num_padded = vllm_moe.align_block_size(ids.astype(np.int32), block_m, E, np)
    rows, experts = align_loop(ids, block_m, E)
    A = T * K
    assert sorted_ids.dtype == expert_ids.dtype == num_padded.dtype == np.int32
    assert num_padded.shape == (1,) and int(num_padded[0]) == len(rows)
    assert sorted_ids.shape[0] % block_m == 0 and sorted_ids.shape[0] >= len(rows)
    np.testing.assert_array_equal(sorted_ids[:len(rows)], rows)
    assert np.all(sorted_ids[len(rows):] == A)
    np.testing.assert_array_equal(expert_ids[:len(experts)], experts)
    assert np.all(expert_ids[len(experts):] == -1)
    assert expert_ids.shape[0] == sorted_ids.shape[0] // block_m


def test_naive_blocks_only_for_tiny_batches():
    assert vllm_moe.uses_naive_blocks(1, 8, 128) and vllm_moe.uses_naive_blocks(4, 8, 128)
    assert not vllm_moe.uses_naive_blocks(5, 8, 128)
    assert vllm_moe.uses_naive_blocks(1, 4, 32) and not vllm_moe.uses_naive_blocks(3, 4, 32)


def test_tuned_configs_and_nearest_entry(tmp_path):
    (tmp_path / "configs").mkdir()
    table = {"1": {"BLOCK_SIZE_M": 16}, "64": {"BLOCK_SIZE_M": 32}, "4096": {"BLOCK_SIZE_M": 128},
             "triton_version": "3.6.0"}
    (tmp_path / "configs" / "E=128,N=768,device_name=NVIDIA_H200.json").write_text(json.dumps(table))
    configs = vllm_moe.tuned_configs(128, 768, "NVIDIA H200", str(tmp_path))
    assert sorted(configs) == [1, 64, 4096]
    assert [vllm_moe.nearest_key(configs, T) for T in (1, 20, 40, 2000, 3000, 16384)] == [1, 1, 64, 64, 4096, 4096]
    assert vllm_moe.tuned_configs(32, 2880, "NVIDIA H200", str(tmp_path)) is None
    assert vllm_moe.tuned_configs(128, 768, "NVIDIA H100 80GB HBM3", str(tmp_path)) is None
    assert vllm_moe.vllm_device_name("NVIDIA H200 NVL") == "NVIDIA_H200"
    assert vllm_moe.vllm_device_name("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3"


def test_sweep_candidates_are_valid_triton_tiles():
    """The kernel masks ragged N and K edges, so tiles need only be powers of two >= 16 (tl.dot)."""
    for T, K, E in [(1, 8, 128), (512, 8, 128), (8, 4, 32), (512, 4, 32), (16384, 4, 32)]:
        cands = vllm_moe.sweep_candidates(T, K, E)
        assert len(cands) == 4 and len({tuple(sorted(c.items())) for c in cands}) == 4
        for c in cands:
            for k in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"):
                assert c[k] >= 16 and c[k] & (c[k] - 1) == 0
            assert c["num_warps"] in (4, 8) and c["num_stages"] >= 2


def test_missing_peer_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch_peers.py"):
        vllm_moe.load_kernel(str(tmp_path))


def test_fetch_peers_extracts_functions_and_refuses_unknown_globals():
    fetch = load_script("fetch_peers")
    src = ("import triton\nimport triton.language as tl\nX = 1\n\n@triton.jit\ndef write_zeros_to_output(a):\n"
           "    return tl.zeros((1,), dtype=tl.float32)\n\n@triton.jit\ndef fused_moe_kernel(a, b):\n"
           "    c = write_zeros_to_output(a)\n    return min(a, b) + c\n")
    out = fetch.extract_functions(src)
    assert out.index("def write_zeros_to_output") < out.index("def fused_moe_kernel")
    assert out.count("@triton.jit") == 2 and "X = 1" not in out
    with pytest.raises(SystemExit, match="uses"):
        fetch.extract_functions(src.replace("min(a, b)", "X"))
    with pytest.raises(SystemExit, match="no"):
        fetch.extract_functions(src.replace("def fused_moe_kernel", "def other"))


@pytest.mark.parametrize("argv,message", [
    (["--peers", "vllm,torch_grouped_mm"], "--peers: unknown ['vllm']"),
    (["--models", "llama"], "--models: unknown ['llama']"),
    (["--tokens", "1,x"], "--tokens: comma-separated integers"),
    (["--tokens", "0"], "--tokens: integers in [1,"),
    (["--reps", "0"], "--reps must be >= 1"),
])
def test_bench_moe_bad_arguments(argv, message, capsys):
    bench_moe = load_script("bench_moe")
    with pytest.raises(SystemExit):
        bench_moe.parse_args(argv)
    assert message in capsys.readouterr().err


def test_bench_attention_bad_arguments(capsys):
    bench_attention = load_script("bench_attention")
    with pytest.raises(SystemExit):
        bench_attention.parse_args(["--cases", "most"])
    assert "invalid choice" in capsys.readouterr().err
    assert bench_attention.parse_args(["--quick"]).cases == "quick"


def fake_ceilings(tmp_path):
    path = tmp_path / "ceilings.json"
    path.write_text(json.dumps(dict(copy_Bps=4e12, matmul_flops=7e14, copy_method="torch_copy",
                                    matmul_method="torch", datasheet_copy_Bps=4.8e12,
                                    datasheet_matmul_flops=989e12, copy_Bps_over_datasheet=4 / 4.8,
                                    matmul_flops_over_datasheet=700 / 989, device="cpu")))
    return str(path)


def test_bench_moe_dry_run(tmp_path, monkeypatch):
    """bench_moe end to end on the CPU: a tiny model, ours and our decode path = the reference (no
    Mosaic GPU here), every peer asked for; the GPU-only peers must come back as null with their
    error, not stop the run. The decode path (opt-in, LP_JAX_MOE_DECODE_MAX_TOKENS=2) is its own
    column up to 2 tokens, never the best peer; unset, the table says it was not measured."""
    bench_moe = load_script("bench_moe")
    from pallas_kernels.moe_reference import moe_experts_reference
    monkeypatch.setattr(bench_moe, "MODELS", {"qwen3_30b_a3b": (4, 2, 128, 128, "swiglu", False)})
    monkeypatch.setattr(bench_moe, "NSETS", 2)
    monkeypatch.setattr(bench_moe, "moe_experts_pallas", moe_experts_reference)
    monkeypatch.setattr(bench_moe, "moe_experts_decode", moe_experts_reference)
    monkeypatch.setenv("LP_JAX_MOE_DECODE_MAX_TOKENS", "2")
    out = tmp_path / "out"
    assert bench_moe.main(["--tokens", "1,3", "--reps", "1", "--ceilings", fake_ceilings(tmp_path),
                           "--peers", "vllm_fused_moe,torch_grouped_mm,lax_ragged_dot", "--out-dir", str(out)]) == 0
    device = jax.devices()[0].device_kind
    rows = json.loads((out / f"moe_{bench_moe.device_slug(device)}.json").read_text())
    assert [r["tokens"] for r in rows] == [1, 3]
    for r in rows:
        assert r["ours_ms"] > 0 and r["ours_err"] < 1e-2 and r["floor_ms"] > 0
        assert r["tiles"].startswith("default_config")  # the CPU has no tuned table
        assert r["vllm_fused_moe_ms"] is None and r["vllm_fused_moe_error"]
        assert r["torch_grouped_mm_ms"] is None and r["torch_grouped_mm_error"]
        assert r["lax_ragged_dot_ms"] > 0 and r["best_peer"] == "lax_ragged_dot"  # never our own
        assert r["speedup_vs_best_peer"] == pytest.approx(r["lax_ragged_dot_ms"] / r["ours_ms"])
    one, three = rows
    assert one["pallas_decode_ms"] > 0 and one["pallas_decode_err"] < 1e-2 and "pallas_decode_config" in one
    assert one["speedup_vs_pallas_decode"] == pytest.approx(one["pallas_decode_ms"] / one["ours_ms"])
    assert one["pallas_decode_over_floor"] == pytest.approx(one["pallas_decode_ms"] / one["floor_ms"])
    assert "pallas_decode_ms" not in three  # above the limit: not measured
    md = (out / f"moe_{bench_moe.device_slug(device)}.md").read_text()
    assert "vLLM fused_moe (Triton) ms (x)" in md and "83% of the datasheet's 4.8 TB/s" in md
    assert "our decode path ms (x, /floor)" in md and "LP_JAX_MOE_DECODE_MAX_TOKENS=2" in md
    ceil = json.loads(open(fake_ceilings(tmp_path)).read())
    off = bench_moe.markdown(rows, ceil, device, ["lax_ragged_dot"])
    assert "our decode path ms" not in off and "not measured in this run" in off
    monkeypatch.setenv("LP_JAX_MOE_DECODE_MAX_TOKENS", "65")
    with pytest.raises(SystemExit):
        bench_moe.parse_args([])


def test_bench_attention_dry_run(tmp_path, monkeypatch):
    """bench_attention's target cases end to end on the CPU at tiny sizes, ours = the reference;
    the Triton and cuDNN peers cannot run on the CPU and must be recorded as null."""
    bench_attention = load_script("bench_attention")
    from pallas_kernels.attention_reference import paged_attention_reference

    def ours(q, kp, vp, layer, table, seq, pos, *, window=None, plan=None, config=None):
        window = plan["windows"][0] if plan is not None else window  # the per-layer call takes a plan
        return paged_attention_reference(q, kp, vp, layer, table, seq, pos, window=window)
    monkeypatch.setattr(bench_attention, "paged_attention", ours)
    monkeypatch.setattr(bench_attention, "SHAPES", {"gpt_oss": (16, 2, 64)})  # one model: each case compiles 3 calls
    monkeypatch.setattr(bench_attention, "TARGET_DECODE", (2, 64))
    monkeypatch.setattr(bench_attention, "TARGET_PREFILL", 32)
    monkeypatch.setattr(bench_attention, "NSETS", 1)
    monkeypatch.setattr(bench_attention.Bench, "profile_ours", lambda self, row, fn, s: None)
    out = tmp_path / "out"
    assert bench_attention.main(["--cases", "targets", "--reps", "1", "--ceilings", fake_ceilings(tmp_path),
                                 "--out-dir", str(out)]) == 0
    device = jax.devices()[0].device_kind
    rows = json.loads((out / f"attention_{bench_attention.device_slug(device)}_targets.json").read_text())
    assert [r["case"] for r in rows] == ["decode gpt_oss 2x64", "prefill gpt_oss 1x32 full"]
    for r in rows:
        assert r["ours_ms"] > 0 and r["ours_err"] < 1e-2 and r["floor_ms"] > 0 and "tiles" in r
        assert r["ours_with_plan_ms"] > 0
    assert all(r["triton_paged_attention_ms"] is None for r in rows if r["kind"] == "decode")
    assert all(r["cudnn_ms"] is None and r["cudnn_error"] for r in rows if r["kind"] == "prefill")


@pytest.mark.gpu
@pytest.mark.skipif(not os.path.exists(os.path.join(vllm_moe.PEER_DIR, "fused_moe_kernel.py")),
                    reason=".peers/vllm_fused_moe absent: run scripts/fetch_peers.py and carry .peers")
@pytest.mark.parametrize("model", ["qwen3", "gpt_oss"])
@pytest.mark.parametrize("T", [1, 3, 100])
def test_vllm_peer_matches_reference_gpu(model, T):
    """vLLM's kernel through our align step and activation: the naive-block path (T=1), the aligned
    path with ragged groups (3, 100), biases and the clamped activation (GPT-OSS)."""
    import torch

    from pallas_kernels.moe_reference import moe_experts_reference, random_experts
    E, K, D, F, act, bias = ((128, 8, 2048, 768, "swiglu", False) if model == "qwen3"
                             else (32, 4, 2880, 2880, "clamped_swiglu", True))
    ex = random_experts(jax.random.key(T), E, D, F, bias)
    x = jax.random.normal(jax.random.key(T + 1), (T, D), jnp.bfloat16)
    top, ids = jax.lax.top_k(jax.random.normal(jax.random.key(T + 2), (T, E)), K)
    w = jax.nn.softmax(top, axis=-1)
    ref = moe_experts_reference(x.astype(jnp.float32), w, ids.astype(jnp.int32),
                                {k: v.astype(jnp.float32) for k, v in ex.items()}, activation=act)
    t = lambda a: torch.from_dlpack(a)  # noqa: E731
    weights = vllm_moe.vllm_weights(*(t(ex[k]) if k in ex else None
                                      for k in ("w_gate", "w_up", "w_down", "b_gate", "b_up", "b_down")))
    cfg = vllm_moe.sweep_candidates(T, K, E)[0]
    layer = vllm_moe.make_layer(weights, act, lambda T: cfg)
    out = layer(t(x), t(w), t(ids).long()).float().cpu().numpy()
    ref = np.asarray(ref)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) <= 1e-2


def test_ceilings_take_the_best_method():
    """On the CPU (tiny arrays): every method that runs is recorded, the ceiling is the best."""
    kernel_ceilings = load_script("kernel_ceilings")
    c = kernel_ceilings.ceilings(reps=2, mib=1, s=64)
    copies = {k: v for k, v in c.items() if k.endswith("_copy_Bps") and not k.startswith("datasheet")
              and k != "copy_Bps"}
    assert {"xla_elementwise_copy_Bps", "xla_copy_copy_Bps"} <= set(copies)
    assert c["copy_Bps"] == max(copies.values()) and c["copy_method"] + "_copy_Bps" in copies
    assert c["matmul_flops"] >= c["xla_matmul_matmul_flops"] > 0
    assert c["datasheet_copy_Bps"] is None and c["copy_Bps_over_datasheet"] is None  # the CPU has no datasheet
    assert "torch_copy" in c["unavailable"] or "torch_copy_copy_Bps" in c
    assert c["device"] in kernel_ceilings.summary(c)
    assert kernel_ceilings.datasheet("NVIDIA H200") == dict(datasheet_copy_Bps=4.8e12, datasheet_matmul_flops=989e12)


def test_tune_moe_dry_run_writes_entries_for_this_device(tmp_path, monkeypatch):
    """tune_moe end to end on the CPU (tiny model, the layer = the reference): it adds entries keyed by
    this device beside the package table's, and times the entry that serves the device now too."""
    tune_moe = load_script("tune_moe")
    from pallas_kernels.moe_reference import moe_experts_reference
    monkeypatch.setattr(tune_moe, "MODELS", {"tiny": (4, 2, 128, 128, "swiglu", False)})
    monkeypatch.setattr(tune_moe, "moe_experts_pallas", lambda *a, config=None, **kw: moe_experts_reference(*a, **kw))
    table_out, log = tmp_path / "moe_tiles.json", tmp_path / "sweep.json"
    assert not tune_moe.main(["--models", "tiny", "--tokens", "1", "--reps", "1", "--log", str(log),
                              "--table-out", str(table_out)])
    device = jax.devices()[0].device_kind
    entries = json.loads(table_out.read_text())
    mine = [e for e in entries if e["device"] == device]
    assert [(e["E"], e["D"], e["F"], e["rows_bucket"]) for e in mine] == [(4, 128, 128, 2)]
    assert any(e["device"] == "NVIDIA H100 80GB HBM3" for e in entries)  # the package table's are kept
    sweep = json.loads(log.read_text())
    assert len(sweep) >= 2 and all(r["tokens"] == 1 and r["ms"] is not None for r in sweep)
