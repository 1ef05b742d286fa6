"""Run NVIDIA's aiperf against `lp-jax serve` on loopback and set its TTFT and ITL beside the
engine's own records of the same requests; writes benchmarks/results/serve_cpu.{json,md}
(section aiperf) and aiperf's own summary JSON as serve_cpu_aiperf.json beside them.

    python3.12 -m venv .aiperf && .aiperf/bin/pip install aiperf      # once: aiperf's own venv
    .venv/bin/python scripts/bench_serve.py                            # SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

from lp_jax.bench.serve_aiperf import AIPERF_SUMMARY_KEYS, INSTALL_HINT, aiperf_command, compare, run_aiperf
from lp_jax.bench.serve_process import ServeProcess, add_server_options
from lp_jax.bench.serve_results import update_results

CPU_ENGINE = ["max_num_seqs=8", "max_model_len=256", "max_prefill_tokens=128", "max_cohort_tokens=128",
              "token_budget=64", "row_buckets=16,64,136"]


def tokenizer_folder(model: str, work: pathlib.Path) -> pathlib.Path:
    """A local tokenizer folder aiperf can load: a GGUF model's tokenizer written out, or a
    checkpoint folder that has one."""
    from lp_jax.checkpoint.gguf import GGUFCheckpoint, is_gguf
    from lp_jax.checkpoint.gguf_tokenizer import write_tokenizer_folder

    if is_gguf(model):
        return write_tokenizer_folder(GGUFCheckpoint(model), work / "tokenizer")
    if (pathlib.Path(model) / "tokenizer.json").is_file():
        return pathlib.Path(model)
    raise ValueError(f"{model} has no tokenizer, and aiperf sends text: use a GGUF model or a checkpoint folder")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_options(p, "smollm2-135m-instruct", CPU_ENGINE)
    p.add_argument("--aiperf", default=".aiperf/bin/aiperf", help="the aiperf executable (default: %(default)s)")
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--input-tokens", type=int, default=32)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--work", default=None, help="folder for aiperf's artifacts and the request log "
                                                "(default: lp-jax-results/bench-serve-<date>-<time>)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if not (shutil.which(args.aiperf) or os.access(args.aiperf, os.X_OK)):
        print(f"error: no aiperf at {args.aiperf}; install it in its own venv: {INSTALL_HINT}", file=sys.stderr)
        return 2
    work = pathlib.Path(args.work or f"lp-jax-results/bench-serve-{time.strftime('%Y%m%d-%H%M%S')}")
    work.mkdir(parents=True, exist_ok=True)
    options = args.engine_option or CPU_ENGINE
    tokenizer = tokenizer_folder(args.model, work)
    log_path = work / "requests.jsonl"
    log_path.unlink(missing_ok=True)
    with ServeProcess(args.model, args.schedule, options, request_log=str(log_path),
                      log_path=str(work / "server.log")) as server:
        command = aiperf_command(args.aiperf, server.url, args.model, tokenizer, work / "aiperf",
                                 requests=args.requests, concurrency=args.concurrency,
                                 input_tokens=args.input_tokens, output_tokens=args.output_tokens)
        summary, records = run_aiperf(command, work / "aiperf")
    request_log = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    comparison = compare(records, request_log)
    section = {"model": args.model, "schedule": args.schedule, "engine_options": options,
               "aiperf_version": summary.get("aiperf_version"),
               "run": {"requests": args.requests, "concurrency": args.concurrency, "input_tokens": args.input_tokens,
                       "output_tokens": args.output_tokens, "command": " ".join(command[1:])},
               "aiperf_summary": {k: summary[k] for k in AIPERF_SUMMARY_KEYS if k in summary},
               "comparison": comparison}
    paths = update_results(args.out, "aiperf", section)
    raw = pathlib.Path(args.out) / "serve_cpu_aiperf.json"
    raw.write_text(json.dumps(summary, indent=1) + "\n")
    ms = comparison["ms"]
    print(f"TTFT: aiperf {ms['aiperf_ttft_ms']['mean']:.1f} ms, engine {ms['engine_ttft_ms']['mean']:.1f} ms "
          f"(difference {ms['ttft_diff_ms']['mean']:.1f} ms; aiperf's pre-server overhead "
          f"{ms['aiperf_pre_server_ms']['mean']:.1f} ms); ITL: aiperf {ms['aiperf_itl_ms']['mean']:.1f} ms, "
          f"engine {ms['engine_itl_ms']['mean']:.1f} ms (mean over {comparison['matched_requests']} requests)")
    print("wrote " + ", ".join(map(str, [*paths, raw])) + f"; artifacts in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
