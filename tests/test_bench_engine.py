"""scripts/bench_engine.py on the CPU with a tiny preset (the smoke test of the GPU benchmark)."""

from __future__ import annotations

import json

import pytest

from lp_jax.bench import plan_timing
from lp_jax.bench.hlo import layer_slices
from tests.script_loader import load_script


def test_quick_run_writes_every_case_with_floors(tmp_path):
    bench = load_script("bench_engine")
    assert bench.main(["--model", "tiny-qwen3-moe", "--quick", "--hlo", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "engine_cpu.json").read_text())
    entry = data["models"]["tiny-qwen3-moe"]
    cases = {r["case"]: r for r in entry["cases"]}
    assert set(cases) == {"decode B=4", "prefill 256", "layered mixed", "chunked mixed", "8-request run (layered)"}
    for name, r in cases.items():
        assert "error" not in r, r
        if "floor_ms" in r:
            assert r["floor_ms"] > 0 and r["device_ms"] > 0 and r["bytes_GB"] > 0, name
    assert cases["8-request run (layered)"]["compiles"] == 0
    for name in ("prefill 256", "layered mixed", "chunked mixed"):  # pipelined: where the host time goes
        r = cases[name]
        parts = [r["host_prepare_ms"], r["host_launch_ms"], r["host_wait_ms"]]
        assert min(parts) >= 0 and r["host_prepare_ms"] > 0, (name, parts)
        assert sum(parts) <= 3 * r["pipelined_ms"], (name, parts)  # medians of steps whose mean is the wall
    assert cases["layered mixed"]["prefill_tokens"] == 256 and cases["chunked mixed"]["prefill_tokens"] == 32
    assert entry["layer_slices"]  # the reference path on the CPU slices layers; counted, not judged here
    md = (tmp_path / "engine_cpu.md").read_text()
    assert "| decode B=4 |" in md
    # Ceilings: the best of the methods that ran here, and no datasheet for a CPU.
    c = entry["ceilings"]
    assert c["copy_method"] in ("xla_elementwise", "xla_copy") and c["copy_Bps_over_datasheet"] is None
    assert all(r["datasheet_ratio"] is None for r in cases.values() if "floor_ms" in r)
    assert "datasheet unknown" in md and "| wall / datasheet floor |" in md and "| unknown |" in md


def test_layer_slices_are_grouped_by_the_fusion_that_holds_them():
    hlo = """%fused_slice (p0: bf16[4,8,16], p1: s32[]) -> bf16[8,16] {
  %ds = bf16[1,8,16]{2,1,0} dynamic-slice(%p0, %p1, %c, %c), dynamic_slice_sizes={1,8,16}
}
%fused_gemm (p0: bf16[4,8,16], p1: s32[]) -> bf16[2,16] {
  %ds2 = bf16[1,8,16]{2,1,0} dynamic-slice(%p0, %p1, %c, %c), dynamic_slice_sizes={1,8,16}
}
ENTRY %main {
  %a = bf16[8,16]{1,0} fusion(%w, %i), kind=kLoop, calls=%fused_slice
  %b = bf16[2,16]{1,0} fusion(%w, %i), kind=kCustom, calls=%fused_gemm, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
}
"""
    assert layer_slices(hlo) == {"kLoop": [1, 256], "__triton_gemm": [1, 256]}


def test_unknown_case_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        load_script("bench_engine").main(["--model", "tiny-qwen3-moe", "--cases", "decode,warp"])
    assert "unknown case(s) warp" in capsys.readouterr().err


class _FakeKernelTimes:
    """Stands in for CUPTI on the CPU so that `timed` runs its second (kernel-time) loop."""

    dropped, busy_ms = 0, 0.0

    @staticmethod
    def available():
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_engine_expert_bytes_are_per_step_when_kernel_times_run_a_second_loop(tmp_path, monkeypatch):
    bench = load_script("bench_engine")
    monkeypatch.setattr(plan_timing, "KernelTimes", _FakeKernelTimes)
    assert bench.main(["--model", "tiny-qwen3-moe", "--quick", "--batches", "1", "--cases", "decode",
                       "--out-dir", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "engine_cpu.json").read_text())["models"]["tiny-qwen3-moe"]["cases"]
    # One decode row routes to exactly top-k experts per layer, in the timed plan and in engine steps.
    assert row["case"] == "decode B=1" and row["engine_expert_GB"] == pytest.approx(row["expert_GB"])
