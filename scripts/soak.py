"""Soak run: thousands of random requests with aborts and invalid input through the incremental
API; writes benchmarks/results/soak_<device>.json and .md.

    .venv/bin/python scripts/soak.py --requests 2000 --schedule layered
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import lp_jax
from lp_jax.bench.soak import run_soak, write_soak_results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="requests to issue")
    ap.add_argument("--schedule", default="layered", choices=["prefill_first", "chunked", "layered"])
    ap.add_argument("--model", default="tiny-qwen3-moe", help="preset name")
    ap.add_argument("--num-pages", type=int, default=16,
                    help="KV pages per layer (small on purpose, so preemption happens)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results", help="folder for soak_<device>.json/.md")
    args = ap.parse_args()

    llm = lp_jax.LLM(args.model, args.schedule, max_model_len=256, max_num_seqs=16, max_prefill_tokens=256,
                     max_cohort_tokens=256, token_budget=128, num_pages=args.num_pages, row_buckets=(16, 64, 128, 272),
                     seed=args.seed)

    def progress(r):
        print(f"\r{r.finished + r.aborted}/{args.requests} ended, {r.preemptions} preemptions, "
              f"RSS {r.rss_mib[-1][1]:.0f} MiB", end="", file=sys.stderr, flush=True)

    report = run_soak(llm, args.requests, seed=args.seed, arrivals_per_step=1.5,
                      rss_every=max(1, args.requests // 40), progress=progress)
    print(file=sys.stderr)
    md = write_soak_results(pathlib.Path(args.out), report, model=args.model, schedule=args.schedule,
                            num_pages=args.num_pages, requests=args.requests)
    print(md)
    bad = report.lost or report.leaked_pages or report.wrong_length or report.compiles_while_serving
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
