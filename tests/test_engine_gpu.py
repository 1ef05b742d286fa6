"""The engine, unchanged, on a Hopper GPU in bf16 with the Pallas kernels: agreement with the CPU
float32 outputs committed in tests/fixtures/engine_cpu_f32.json (see scripts/check_engine_gpu.py
for the full table over presets and schedules)."""

import json

import pytest

from tests.script_loader import load_script


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["chunked", "layered"])
@pytest.mark.parametrize("model", ["tiny-qwen3-moe", "tiny-gpt-oss-hd64"])  # the second: Pallas attention too
def test_bf16_gpu_engine_matches_cpu_float32(model, schedule):
    check = load_script("check_engine_gpu")
    expected = json.loads(check.FIXTURE.read_text())["outputs"][model]
    llm = check.make_llm(model, schedule, "bfloat16")
    assert check.teacher_forced(llm, expected) >= 0.95
