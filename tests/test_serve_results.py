"""benchmarks/results/serve_cpu.{json,md}: the markdown is what the JSON renders to (so a person
reading it reads the measured numbers), and a script's section is replaced with its command while
the other sections stay."""

from __future__ import annotations

import json
import pathlib
import sys

from lp_jax.bench.serve_results import results_markdown, update_results

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_committed_markdown_is_the_json_rendered():
    results = json.loads((RESULTS / "serve_cpu.json").read_text())
    assert set(results) == {"load_test", "aiperf"}
    assert all(section["command"].startswith(".venv/bin/python scripts/") for section in results.values())
    assert (RESULTS / "serve_cpu.md").read_text() == results_markdown(results)


def test_update_replaces_one_section_and_records_its_command(tmp_path, monkeypatch):
    results = json.loads((RESULTS / "serve_cpu.json").read_text())
    (tmp_path / "serve_cpu.json").write_text(json.dumps(results))
    monkeypatch.setattr(sys, "argv", ["scripts/load_test_serve.py", "--num-requests", "7"])
    load = results["load_test"] | {"spec": results["load_test"]["spec"] | {"num_requests": 7}}
    json_path, md_path = update_results(tmp_path, "load_test", load)
    written = json.loads(json_path.read_text())
    assert written["aiperf"] == results["aiperf"]
    assert written["load_test"]["spec"]["num_requests"] == 7
    assert written["load_test"]["command"].endswith("scripts/load_test_serve.py --num-requests 7")
    md = md_path.read_text()
    assert "7 streaming completions per run" in md and "scripts/load_test_serve.py --num-requests 7`" in md
    assert "aiperf 0.13.0 against the engine's own records" in md
