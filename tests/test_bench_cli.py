"""`lp-jax bench` and `lp-jax compare` end to end on a tiny model, their files and plots, and the
errors they give for bad input. Engine options are shared by every run here so that the
executables compile once for the whole module."""

import csv
import json
import os

import matplotlib.image
import pytest

from lp_jax.cli import build_parser, main
from tests.test_vllm_result import VLLM_KEYS

# Small and fast: prompts ~37 tokens, outputs ~7; layered and chunked share one hidden buffer
# (8 + 128 + 1 rows) and one bucket ladder, hence one set of executables.
ENGINE = ["-o", "max_num_seqs=8", "-o", "max_model_len=128", "-o", "max_prefill_tokens=128",
          "-o", "max_cohort_tokens=128", "-o", "token_budget=128", "-o", "row_buckets=32,136"]
SMALL = ["--model", "tiny-qwen3-moe", "--num-requests", "6", "--length-scale", "0.015625", "--warmup", "1",
         "--no-progress", *ENGINE]
CONFIGS = ["--schedule", "layered:group_tokens=16", "--schedule", "chunked:token_budget=32"]

REQUEST_FIELDS = {"id", "arrival_s", "prompt_tokens", "output_tokens", "token_times_s", "status", "expert_bytes",
                  "expert_streamed_bytes"}
SUMMARY_FIELDS = {"ttft_s", "tbt_s", "tpot_s", "e2e_s", "throughput_tok_s", "slo_attainment",
                  "expert_bytes_per_request", "expert_streamed_bytes_per_request", "expert_bytes_per_iteration",
                  "expert_streamed_bytes_per_iteration", "iterations", "energy_j", "energy_mj_per_token", "energy_mj_per_output_token",
                  "energy_reason", "model", "schedule", "options", "device", "jax_version", "date", "workload"}


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", *SMALL, *CONFIGS, "--rates", "20,50", "--out", str(out)]) == 0
    return out


def _check_run_dir(path, n):
    with open(path / "requests.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == n
    for r in lines:
        assert set(r) >= REQUEST_FIELDS and r["status"] == "finished"
        assert len(r["token_times_s"]) == r["output_tokens"] >= 1
        assert r["token_times_s"][0] >= r["arrival_s"] and r["token_times_s"] == sorted(r["token_times_s"])
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary) >= SUMMARY_FIELDS
    assert set(summary["ttft_s"]) == {"mean", "p50", "p90", "p99"}
    # The kernels stream an expert once per row tile, so at least once per distinct expert.
    assert summary["expert_streamed_bytes_per_request"] >= summary["expert_bytes_per_request"] > 0
    assert summary["expert_bytes_per_iteration"] == pytest.approx(summary["expert_bytes_window"] / summary["iterations"])
    assert summary["energy_j"] is None and "cpu" in summary["energy_reason"]
    assert summary["compiles_during_serving"] == 0
    vllm = json.loads((path / "vllm_result.json").read_text())
    assert VLLM_KEYS <= set(vllm)
    assert vllm["completed"] == summary["num_finished"] == n and vllm["num_prompts"] == n
    assert vllm["duration"] == pytest.approx(summary["duration_s"])
    assert vllm["output_throughput"] == pytest.approx(summary["throughput_tok_s"])
    assert vllm["request_goodput"] == pytest.approx(summary["request_goodput_per_s"])
    assert vllm["mean_ttft_ms"] == pytest.approx(1e3 * summary["ttft_s"]["mean"])
    return summary


def test_compare_writes_every_file(compare_dir):
    runs = sorted(os.listdir(compare_dir / "runs"))
    assert runs == ["chunked_token_budget-32-rate20", "chunked_token_budget-32-rate50",
                    "layered_group_tokens-16-rate20", "layered_group_tokens-16-rate50"]
    summaries = [_check_run_dir(compare_dir / "runs" / r, 6) for r in runs]
    assert {s["schedule"] for s in summaries} == {"layered", "chunked"}
    assert summaries[0]["options"]["token_budget"] == 32 and summaries[2]["options"]["group_tokens"] == 16
    with open(compare_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {"label", "workload.rate", "ttft_s.p99", "slo_attainment"} <= set(rows[0])
    report = (compare_dir / "results.md").read_text()
    assert "| layered:group_tokens=16 | 20 |" in report and "Energy not measured" in report
    assert "goodput (req/s)" in report and "TTFT <= 500 ms, TPOT <= 100 ms" in report  # the SLO bounds by default
    assert "relative to layered:group_tokens=16 (distinct / streamed)" in report
    spec = json.loads((compare_dir / "compare.json").read_text())
    # Interleaved rate-major, the order alternating per rate: L C at 20, C L at 50.
    assert [(r["config"].split(":")[0], r["rate"]) for r in spec["run_order"]] == [
        ("layered", 20.0), ("chunked", 20.0), ("chunked", 50.0), ("layered", 50.0)]
    assert (compare_dir / "aggregate.csv").exists()
    assert spec["rates"] == [20.0, 50.0] and spec["model"] == "tiny-qwen3-moe"


def test_plots_open_and_have_labelled_axes(compare_dir):
    from lp_jax.bench.plots import FIGURES

    for name in FIGURES:
        image = matplotlib.image.imread(compare_dir / "plots" / name)
        assert image.shape[0] > 100 and image.shape[1] > 100


def test_figures_label_axes_with_units(compare_dir):
    import matplotlib.pyplot as plt

    from lp_jax.bench.metrics import RequestRecord
    from lp_jax.bench.plots import FIGURES
    from lp_jax.bench.runner import BenchResult

    results = []
    for run in sorted(os.listdir(compare_dir / "runs")):
        d = compare_dir / "runs" / run
        with open(d / "requests.jsonl") as f:
            records = [RequestRecord(**json.loads(line)) for line in f]
        results.append(BenchResult(records, json.loads((d / "summary.json").read_text())))
    for name, make in FIGURES.items():
        fig = make(results)
        for ax in fig.axes:
            if ax.get_xlabel() or ax.get_ylabel():
                assert "(" in ax.get_xlabel() and ")" in ax.get_xlabel(), (name, ax.get_xlabel())
        assert any("(" in ax.get_ylabel() for ax in fig.axes), name
        plt.close(fig)


def test_bench_writes_requests_and_summary(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", *SMALL, "--schedule", "chunked:token_budget=32", "--rate", "50", "--routing", "qwen3-paper",
                 "--out", str(out), "--goodput", "ttft:60000", "e2el:60000"]) == 0
    summary = _check_run_dir(out, 6)
    assert summary["label"] == "chunked:token_budget=32" and summary["workload"]["rate"] == 50.0
    assert summary["options"]["routing"] == "qwen3-paper"
    # Bounds no CPU run misses: every finished request counts.
    assert summary["goodput_slo_ms"] == dict(ttft=60000.0, e2el=60000.0)
    assert summary["request_goodput_per_s"] == pytest.approx(summary["request_throughput_per_s"])
    printed = capsys.readouterr().out
    assert "SLO attainment" in printed and "not measured" in printed and "summary.json" in printed
    assert "streamed by the grouped matmuls (routing qwen3-paper)" in printed


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt-5"], "unknown model preset 'gpt-5'"),
    (["--schedule", "fastest"], "unknown schedule 'fastest'"),
    (["--schedule", "chunked:chunk=3"], "unknown engine option 'chunk'"),
    (["--schedule", "chunked:token_budget=lots"], "token_budget: expected int"),
    (["--rates", "1,-2"], "bad rate '-2'"),
    (["--rates", "fast"], "bad rate 'fast'"),
    (["--workload", "nowhere"], "unknown workload 'nowhere'"),
    (["--num-requests", "0"], "--num-requests must be >= 1"),
    (["--slo-tbt-s", "0"], "SLO bounds must be > 0"),
    (["--goodput", "ttft:500", "itl:20"], "goodput bound 'itl:20'"),
    (["--routing", "zipf"], "unknown routing profile 'zipf'"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys, tmp_path):
    assert main(["compare", "--no-progress", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_malformed_csv_error_names_line_and_column(tmp_path, capsys):
    trace = tmp_path / "bad.csv"
    trace.write_text("num_prefill_tokens,num_decode_tokens\n10,5\n12,x\n")
    assert main(["bench", "--workload", str(trace), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "bad.csv:3: column num_decode_tokens" in capsys.readouterr().err


def test_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["bench", "--out", str(blocker / "sub"), "--no-progress"]) == 2
    assert "cannot write results to" in capsys.readouterr().err


def test_every_option_is_explained():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("bench", "compare"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
