"""`lp-jax routing`: the coverage report through the routing sampler (full-size preset) and through
the engine's real layers (tiny preset), its files, and its errors."""

import json

import matplotlib.image

from lp_jax.cli import main


def test_full_size_preset_through_the_sampler(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["routing", "--model", "qwen3-30b-a3b", "--batch-sizes", "16,128", "--chunk-sizes", "512,1024",
                 "--prompt-tokens", "1024", "--draws", "2", "--no-progress", "--out", str(out)]) == 0
    data = json.loads((out / "coverage.json").read_text())
    decode = {p["size"]: p for p in data["points"] if p["axis"] == "decode"}
    assert data["method"].startswith("the routing sampler") and set(decode) == {16, 128}
    assert decode[16]["measured"] < decode[128]["measured"] < decode[128]["uniform_iid"]
    assert abs(decode[128]["measured"] - decode[128]["analytic"]) < 0.03
    assert data["loads_per_prompt"]["1024"] == 1.0 and data["loads_per_prompt"]["512"] > 1.5
    report = (out / "results.md").read_text()
    assert "| 128 |" in report and "86.3 %" in report  # the paper's figure beside ours
    assert matplotlib.image.imread(out / "coverage.png").shape[0] > 100
    assert "wrote" in capsys.readouterr().out


def test_tiny_preset_through_the_engine(tmp_path):
    out = tmp_path / "t"
    assert main(["routing", "--model", "tiny-qwen3-moe", "--routing", "uniform", "--batch-sizes", "1,4",
                 "--chunk-sizes", "32", "--prompt-tokens", "64", "--draws", "1", "--no-progress", "--out", str(out)]) == 0
    data = json.loads((out / "coverage.json").read_text())
    assert data["method"].startswith("the engine's real layer steps")
    assert data["device"] == "cpu (cpu)"  # the device the steps ran on, not a fixed label
    assert "Measured on cpu (cpu) by the engine's" in (out / "results.md").read_text()
    one = next(p for p in data["points"] if p["axis"] == "decode" and p["size"] == 1)
    assert one["measured"] == 2 / 8 and one["analytic"] is None  # one token loads exactly its top-2 of 8


def test_errors(tmp_path, capsys):
    assert main(["routing", "--model", "qwen3-8b", "--out", str(tmp_path)]) == 2
    assert "dense model" in capsys.readouterr().err
    assert main(["routing", "--routing", "zipf", "--out", str(tmp_path)]) == 2
    assert "unknown routing profile 'zipf'" in capsys.readouterr().err
    assert main(["routing", "--chunk-sizes", "4096", "--prompt-tokens", "1024", "--out", str(tmp_path)]) == 2
    assert "chunks <= --prompt-tokens" in capsys.readouterr().err
