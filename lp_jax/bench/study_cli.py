"""The `lp-jax study` subcommand: its options and what it runs (lp_jax.bench.study)."""

from __future__ import annotations

import argparse
import os
import signal
import time

# When this process started to count the budget from (the CLI's imports count too).
PROCESS_START = time.perf_counter()


def add_study_parser(sub) -> None:
    p = sub.add_parser(
        "study", help="run a study's grid of points resumably (models x workloads x schedules x rates x repeats)",
        description="Run every point of a study spec (TOML or JSON, see docs/studies.md) that is not finished yet, "
                    "each into its own folder OUT/<model>/<workload>/<schedule>/r<rate>/rep<k>/ (requests.jsonl, "
                    "summary.json, vllm_result.json as `lp-jax bench` writes them, and point.json: the point's "
                    "resolved spec and timings). Points run interleaved rate-major; one engine per model serves "
                    "every schedule on the same weights and executables. A point's folder appears only when all its "
                    "files are written, so a command killed mid-point redoes only that point.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="the study spec, a .toml or .json file")
    p.add_argument("--out", metavar="DIR",
                   help="results folder (default: the spec's `out`, else lp-jax-results/study-<spec name>)")
    p.add_argument("--redo", action="store_true", help="run finished points again (default: skip them)")
    p.add_argument("--budget-s", type=float, metavar="S",
                   help="stop cleanly before a point that would not finish within S seconds of this command's start "
                        "(estimated from finished points like it; see lp_jax.bench.study.estimate_s)")
    p.add_argument("--tar-new", metavar="PATH",
                   help="at exit (also on a budget stop or an error), tar the points this command finished into PATH "
                        "(paths inside relative to OUT: `tar -xf PATH -C OUT` puts them back)")
    p.add_argument("--summary", action="store_true",
                   help="run nothing: print the table of the finished points (repeats aggregated) and write "
                        "OUT/summary.md and OUT/summary.csv")
    p.add_argument("--jax-cache", metavar="DIR",
                   help="JAX's persistent compilation cache (default: OUT/.jax_cache; 'none' for no cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_study)


def out_folder(args, study) -> str:
    name = os.path.splitext(os.path.basename(args.spec))[0]
    return args.out or study.out or os.path.join("lp-jax-results", f"study-{name}")


class Terminated(Exception):
    """SIGTERM arrived (a command's time limit): unwinds the study so that --tar-new is still written."""


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


def cmd_study(args) -> int:
    from lp_jax.bench.study import run_study, use_compilation_cache
    from lp_jax.bench.study_spec import load_study
    from lp_jax.bench.study_summary import write_summary

    study = load_study(args.spec)
    out = out_folder(args, study)
    if args.summary:
        if not os.path.isdir(out):
            raise ValueError(f"--summary: no results folder {out}: no point of this study has run there "
                             f"(run `lp-jax study {args.spec} --out {out}` first)")
        text, paths = write_summary(study, out)
        print(text)
        print("wrote " + ", ".join(paths))
        return 0
    if args.budget_s is not None and not args.budget_s > 0:
        raise ValueError(f"--budget-s must be > 0 seconds, got {args.budget_s}")
    if args.jax_cache != "none":
        use_compilation_cache(args.jax_cache or os.path.join(out, ".jax_cache"))
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        run = run_study(study, out, redo=args.redo, budget_s=args.budget_s, tar_new=args.tar_new,
                        started=PROCESS_START, progress=not args.no_progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
    text, paths = write_summary(study, out)
    print(text)
    print(f"this command: {len(run.finished)} point(s) finished, {len(run.skipped)} finished before, "
          f"{len(run.left)} left" + (f" ({run.stopped})" if run.stopped else "") + "; wrote " + ", ".join(paths))
    return 0
