"""Load-test `lp-jax serve` on loopback: N streaming completions at C concurrent connections, a
share of the clients leaving mid-stream, three times over (memory must stay flat); writes benchmarks/results/serve_cpu.{json,md}
(section load_test). Exits 1 if a check fails.

    .venv/bin/python scripts/load_test_serve.py             # tiny-qwen3-moe (random weights), 500 x 3
    .venv/bin/python scripts/load_test_serve.py --model smollm2-135m-instruct --num-requests 100
(SmolLM2 on 2 CPU cores takes about a second per 256-token prefill chunk: 500 requests take an hour.)
"""

from __future__ import annotations

import argparse
import sys

from lp_jax.bench.serve_load import LoadSpec, load_section, run_load
from lp_jax.bench.serve_process import ServeProcess, add_server_options
from lp_jax.bench.serve_results import update_results
from lp_jax.llm import resolve_config

CPU_ENGINE = ["max_num_seqs=32", "max_model_len=512", "max_prefill_tokens=512", "max_cohort_tokens=512",
              "token_budget=256", "row_buckets=32,128,256,544"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_options(p, "tiny-qwen3-moe", CPU_ENGINE)
    p.add_argument("--num-requests", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--disconnect-fraction", type=float, default=0.1)
    p.add_argument("--runs", type=int, default=3, help="identical runs, one after another (default: %(default)s)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    options = args.engine_option or CPU_ENGINE
    spec = LoadSpec(args.num_requests, args.concurrency, args.disconnect_fraction)
    with ServeProcess(args.model, args.schedule, options, log_path="/tmp/lp-jax-load-test-server.log") as server:
        vocab = resolve_config(args.model).vocab_size
        runs = []
        for i in range(args.runs):
            report = run_load(server, args.model, spec, vocab)
            runs.append(report)
            print(f"run {i + 1}: {report.exact}/{report.stayed} exact, {report.left} left, "
                  f"{report.aborted_by_server} aborted, pages held {report.pages_used_after:.0f}, "
                  f"RSS {report.rss_mib_after:.0f} MiB, {report.wall_s:.0f} s", flush=True)
    section = load_section(args.model, args.schedule, options, spec, runs)
    paths = update_results(args.out, "load_test", section)
    print("wrote " + ", ".join(map(str, paths)))
    return 0 if section["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
