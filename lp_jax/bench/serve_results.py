"""benchmarks/results/serve_<device>.{json,md}: the HTTP benchmarks' results, one section each
(load_test from scripts/load_test_serve.py, aiperf from scripts/bench_serve.py); a script
rewrites its own section and the markdown of all of them."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import shlex
import sys


def host_device() -> dict:
    """The machine both the server and the clients ran on (these benchmarks run on the CPU)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return {"kind": "cpu", "name": name, "cores": os.cpu_count()}


def invocation() -> str:
    """This process's command line as a person would retype it from the repository root."""
    return shlex.join([os.path.relpath(sys.executable), *sys.argv])


def update_results(out_dir, section: str, data: dict) -> tuple[pathlib.Path, pathlib.Path]:
    """Put `data` under `section` in serve_cpu.json (kept: the other sections), with the command
    that made it, and rewrite serve_cpu.md."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "serve_cpu.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[section] = data | {"command": invocation(), "device": host_device(),
                               "date": datetime.date.today().isoformat()}
    path.write_text(json.dumps(results, indent=1) + "\n")
    md_path = out_dir / "serve_cpu.md"
    md_path.write_text(results_markdown(results))
    return path, md_path


def results_markdown(results: dict) -> str:
    """serve_cpu.md: every section of serve_cpu.json, each with its command, device and date."""
    from lp_jax.bench.serve_aiperf import aiperf_markdown
    from lp_jax.bench.serve_load import load_markdown

    md = ["# lp-jax serve over loopback HTTP, on the CPU", ""]
    for name, render in (("load_test", load_markdown), ("aiperf", aiperf_markdown)):
        if name in results:
            r = results[name]
            md += render(r) + ["", f"Command: `{r['command']}`", "",
                               f"Device: {r['device']['name']} ({r['device']['cores']} cores), server and "
                               f"client on the same machine; {r['date']}.", ""]
    return "\n".join(md)
