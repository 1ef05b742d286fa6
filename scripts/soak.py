"""Soak run: thousands of random requests with aborts and invalid input through the incremental
API; writes benchmarks/results/soak_<device>.json and .md.

    .venv/bin/python scripts/soak.py --requests 2000 --schedule layered
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys

import jax

import lp_jax
from lp_jax.bench.soak import run_soak


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

    llm = lp_jax.LLM(args.model, args.schedule, max_model_len=256, max_num_seqs=16, max_num_batched_tokens=256,
                     token_budget=128, num_pages=args.num_pages, row_buckets=(16, 64, 128, 272), seed=args.seed)

    def progress(r):
        print(f"\r{r.finished + r.aborted}/{args.requests} ended, {r.preemptions} preemptions, "
              f"RSS {r.rss_mib[-1][1]:.0f} MiB", end="", file=sys.stderr, flush=True)

    report = run_soak(llm, args.requests, seed=args.seed, arrivals_per_step=1.5,
                      rss_every=max(1, args.requests // 40), progress=progress)
    print(file=sys.stderr)
    device = jax.devices()[0].device_kind
    result = {"device": device, "date": datetime.date.today().isoformat(), "jax": jax.__version__,
              "model": args.model, "schedule": args.schedule, "num_pages": args.num_pages, **report.as_dict()}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"soak_{device.replace(' ', '_')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    rows = [("requests issued", report.requests), ("rejected (invalid on purpose)", report.rejected),
            ("finished", report.finished), ("aborted", report.aborted), ("lost", report.lost),
            ("finished with a wrong length", report.wrong_length), ("preemptions", report.preemptions),
            ("iterations", report.iterations), ("leaked KV pages", report.leaked_pages),
            ("compilations while serving", report.compiles_while_serving),
            ("peak RSS", f"{result['peak_rss_mib']:.0f} MiB"),
            ("RSS growth, second half", f"{result['rss_growth_mib_per_1k_requests']:+.2f} MiB per 1000 requests"),
            ("wall time", f"{report.wall_s:.0f} s")]
    md = [f"# Soak run: {args.model}, {args.schedule}, {device}, {result['date']}", "",
          f"{args.requests} requests through the incremental API: Poisson arrivals (1.5 per iteration), prompts 1-100 "
          f"tokens, 1-12 output tokens, 30% with a stop token, half sampled at temperature 0.7, 2% invalid, "
          f"an abort in 10% of iterations; KV pool of {args.num_pages} pages of 16 tokens.", "",
          "| measure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    bad = report.lost or report.leaked_pages or report.wrong_length or report.compiles_while_serving
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
