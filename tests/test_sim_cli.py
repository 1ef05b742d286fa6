"""The simulator from the command line: bench and compare with --executor sim, stamped reports, a
bare `lp-jax compare` running both demos, and the errors for a bad executor or table."""

from __future__ import annotations

import json
import os

import pytest

from lp_jax.cli import main


def test_bench_simulated_full_size_writes_a_stamped_summary(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--model", "qwen3-30b-a3b", "--executor", "sim:h100", "--workload", "arxiv-long",
                 "--num-requests", "20", "--rate", "1", "--warmup", "0", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["executor"] == "simulated, cost table h100/qwen3-30b-a3b (derived)"
    assert summary["device"]["platform"] == "simulated" and summary["device"]["name"] == "NVIDIA H100 80GB HBM3"
    assert summary["num_finished"] == 20 and summary["energy_j"] is None
    assert "simulated, cost table h100/qwen3-30b-a3b" in capsys.readouterr().out


def test_compare_simulated_report_says_so(tmp_path):
    out = tmp_path / "compare"
    assert main(["compare", "--model", "tiny-qwen3-moe", "--executor", "sim:cpu", "--num-requests", "12",
                 "--rates", "8,16", "--no-progress", "--out", str(out)]) == 0
    report = (out / "results.md").read_text()
    assert "**simulated, cost table cpu/tiny-qwen3-moe (measured)**" in report
    assert "(simulated)" in report.splitlines()[0]


def test_bare_compare_runs_the_simulated_paper_comparison_and_the_real_demo(tmp_path, monkeypatch):
    ran = []

    def fake_run_compare(spec, folder, progress):
        ran.append((spec, folder))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "results.md"), "w") as f:
            f.write(f"# {spec.model}\n![x](plots/x.png)\n")

    monkeypatch.setattr("lp_jax.bench.compare.run_compare", fake_run_compare)
    assert main(["compare", "--out", str(tmp_path), "--no-progress"]) == 0
    (sim, sim_dir), (real, real_dir) = ran
    assert (sim.model, sim.executor, sim.workload["source"]) == ("qwen3-30b-a3b", "sim", "arxiv-long")
    assert [c.label for c in sim.configs] == ["layered", "chunked:token_budget=512"]
    assert all(c.options["routing"] == "qwen3-paper" for c in sim.configs)  # the paper's calibrated routing
    assert (real.model, real.executor) == ("tiny-qwen3-moe", "model")
    assert sim_dir.endswith("simulated-qwen3-30b-a3b") and real_dir.endswith("real-tiny-qwen3-moe")
    both = (tmp_path / "results.md").read_text()
    assert both.index("SIMULATED") < both.index("# qwen3-30b-a3b") < both.index("REAL") < both.index("# tiny-qwen3-moe")
    assert "](simulated-qwen3-30b-a3b/plots/x.png)" in both
    ran.clear()
    assert main(["compare", "--rates", "4", "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    assert [spec.executor for spec, _ in ran] == ["model"]  # any choice of what to compare: only that
    ran.clear()
    assert main(["compare", "--routing", "qwen3-paper", "--out", str(tmp_path / "two"), "--no-progress"]) == 0
    assert [spec.executor for spec, _ in ran] == ["model"]


@pytest.mark.parametrize("executor,message", [("simulator", "unknown executor"), ("sim:", "unknown executor"),
                                              ("sim:tpu", "no cost table for qwen3-30b-a3b on 'tpu'")])
def test_bad_executor_is_refused(executor, message, capsys, tmp_path):
    assert main(["bench", "--model", "qwen3-30b-a3b", "--executor", executor, "--num-requests", "2",
                 "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
