"""What the engine benchmark writes: its log lines, engine_<device>.json (one entry per model, replaced
when a model runs again) and the markdown table beside it."""

from __future__ import annotations

import json
import pathlib
import re

from lp_jax.bench.ceilings import summary as ceilings_summary
from lp_jax.bench.ceilings import with_datasheet


def device_slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_").removeprefix("nvidia_")


def log(msg: str) -> None:
    print(msg, flush=True)


def write(out_dir: pathlib.Path, device: str, entry: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"engine_{device_slug(device)}.json"
    data = json.loads(path.read_text()) if path.exists() else {"device": device, "models": {}}
    data["models"][entry["model"]] = entry
    path.write_text(json.dumps(data, indent=1))
    path.with_suffix(".md").write_text(markdown(data))


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _ratio(row: dict) -> str:
    """wall / datasheet floor; "unknown" for a device without datasheet peaks, "-" in rows
    written before the column existed."""
    if "datasheet_ratio" not in row:
        return "-"
    return "unknown" if row["datasheet_ratio"] is None else f"{row['datasheet_ratio']:.2f}"


def markdown(data: dict) -> str:
    lines = [f"# Engine iterations vs floors on {data['device']}", "",
             "Written by `scripts/bench_engine.py` (see its --help for what each column measures). ms per "
             "iteration; wall = engine steps (decode) or the pipelined executor loop (others), mean; device = "
             "the prepared iteration launched back to back, mean; serial = rows built, launched and read back, "
             "median; floor = max(bytes / copy bandwidth, FLOPs / matmul rate) per call; host overhead = wall - "
             "device (what the host adds to the device's own pace); kernels = CUPTI kernel time per iteration "
             "(a separate loop), gaps = device - kernels (the device idle between its ~60 kernels per layer); CUPTI "
             "misses some kernels run inside CUDA graphs (the whole-model steps), so there kernels is a lower "
             "bound and gaps an upper bound; ceilings: the best method, each its fastest of 20 runs; wall / "
             "datasheet floor = wall over the floor at the datasheet's bandwidth and matmul peaks (unknown for a "
             "device not in lp_jax.bench.ceilings.DATASHEET).", ""]
    for entry in data["models"].values():
        # Entries written before the ceilings had several methods measured XLA's elementwise copy only.
        c = with_datasheet(dict(dict(device=data["device"], copy_method="xla_elementwise",
                                     matmul_method="xla_matmul", unavailable={}), **entry["ceilings"]))
        lines += [f"## {entry['model']} ({entry['dtype']}, {entry['date']}, jax {entry['jax']})", "",
                  f"Measured in this run: {ceilings_summary(c)}. Start-up: weights "
                  f"{entry['weights_s']:.1f} s, {entry['executables']} executables compiled in "
                  f"{entry['compile_s']:.1f} s (row buckets {entry['row_buckets']}); KV pool {entry['num_pages']} "
                  f"pages of {entry['page_size']} tokens.", "",
                  "| case | rows (buckets) | wall ms | device ms | serial ms | floor ms | wall / floor | "
                  "device / floor | wall / datasheet floor | kernels ms | gaps ms | expert GB | host overhead ms (%) |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in entry["cases"]:
            if "error" in r:
                lines.append(f"| {r['case']} | error: {r['error'][:120]} | | | | | | | | | | | |")
            if "buckets" not in r:
                continue
            calls = f" in {r['step_calls']} calls" if r.get("step_calls", 0) > len(r["buckets"]) else ""
            lines.append(f"| {r['case']} | {r['buckets']}{calls} | {r[r['wall'] + '_ms']:.2f} ({r['wall']}) | "
                         f"{r['device_ms']:.2f} | {r['serial_ms']:.2f} | {r['floor_ms']:.2f} | {r['ratio']:.2f} | "
                         f"{r['device_ratio']:.2f} | {_ratio(r)} | {_ms(r['kernel_busy_ms'])} | "
                         f"{_ms(r['launch_gaps_ms'])} | "
                         f"{r['expert_GB']:.2f} | {r['host_overhead_ms']:.2f} "
                         f"({r['host_overhead_pct']:.1f}%) |")
        for r in entry["cases"]:
            if "host_prepare_ms" in r:
                lines.append(f"\n{r['case']}, host time of a pipelined step (medians): building rows "
                             f"{r['host_prepare_ms']:.2f} ms, in the launch calls {r['host_launch_ms']:.2f} ms, "
                             f"waiting for the previous iteration's tokens {r['host_wait_ms']:.2f} ms.")
            if r.get("floor_rate_pct"):
                lines.append(f"\n{r['case']}: {r['floor_rate_pct']:.0f}% of the floor rate.")
            if "compiles" in r:
                lines.append(f"\n{r['case']}: {r['wall_s']:.1f} s wall, {r['compiles']} compilations, "
                             f"{r['prompt_tokens']} prompt and {r['output_tokens']} output tokens.")
        lines += [""] + [f"- {n}" for n in entry["notes"]] + [""]
    return "\n".join(lines) + "\n"
