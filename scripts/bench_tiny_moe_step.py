"""Training-step speed of the tiny Shakespeare MoE: the blocked expert path against the ragged_dot
reference, in one process, alternating, on random token windows (a step's cost does not depend
on the text).

    .venv/bin/python scripts/bench_tiny_moe_step.py                 # defaults = train_tiny_moe.py's model
    .venv/bin/python scripts/bench_tiny_moe_step.py -- --layers 6 --hidden 192 --expert-hidden 48 --batch 64

Arguments after `--` go to train_tiny_moe.py's parser (model and batch). Prints and writes
<out>.md / <out>.json: median wall seconds per step, steps/s, tokens/s and CPU seconds per step
of each path over --rounds alternating rounds of --steps steps (after one compiling step each),
and the ratio reference / blocked measured in the same run, with the device and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, train_argv = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and path")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tiny_moe_train_step_cpu")
    args = p.parse_args(own)
    if args.steps < 1 or args.rounds < 1:
        raise SystemExit("error: --steps and --rounds must be >= 1")

    import jax

    import train_tiny_moe as training

    paths = training.EXPERTS_PATHS
    setups = {}
    for path in paths:
        targs = training.parse_args([*train_argv, "--experts-path", path])
        config = training.model_config(targs)
        ids = np.random.default_rng(0).integers(0, targs.vocab, 200_000).astype(np.int32)
        _, params, state, step, _, next_batch = training.setup_training(config, targs, ids)
        params, state, loss = step(params, state, next_batch(), np.float32(1e-3))  # compile
        jax.block_until_ready(loss)
        setups[path] = [params, state, step, next_batch]
    walls = {p: [] for p in paths}
    cpus = {p: [] for p in paths}
    load0 = os.getloadavg()[0]
    for _ in range(args.rounds):
        for path in paths:
            params, state, step, next_batch = setups[path]
            for _ in range(args.steps):
                w0, c0 = time.perf_counter(), time.process_time()
                params, state, loss = step(params, state, next_batch(), np.float32(1e-3))
                jax.block_until_ready(loss)
                walls[path].append(time.perf_counter() - w0)
                cpus[path].append(time.process_time() - c0)
            setups[path][:2] = params, state
    tokens = targs.batch * targs.seq_len
    rows = {p: {"wall_s_per_step": float(np.median(walls[p])), "steps_per_s": 1 / float(np.median(walls[p])),
                "tokens_per_s": tokens / float(np.median(walls[p])), "cpu_s_per_step": float(np.median(cpus[p]))}
            for p in paths}
    ratio = rows["reference"]["wall_s_per_step"] / rows["blocked"]["wall_s_per_step"]
    meta = {"device": f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores",
            "load_average": [round(load0, 1), round(os.getloadavg()[0], 1)],
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "model": config.name,
            "train_args": train_argv, "params": config.total_params(), "tokens_per_step": tokens,
            "steps_per_round": args.steps, "rounds": args.rounds,
            "command": "scripts/bench_tiny_moe_step.py " + " ".join(argv)}
    lines = [f"# Training step of {config.name}: blocked experts vs the ragged_dot reference", "",
             f"{meta['device']}, {meta['date_utc']} UTC, load average {meta['load_average'][0]} -> "
             f"{meta['load_average'][1]} (a shared machine: the ratio is measured in one process, alternating); "
             f"`{meta['command']}`; {config.total_params() / 1e6:.2f} M parameters, {tokens} tokens per step; "
             f"median of {args.rounds} x {args.steps} steps per path.", "",
             "| experts path | wall s / step | steps / s | tokens / s | CPU s / step |", "|---|---:|---:|---:|---:|"]
    for p in paths:
        r = rows[p]
        lines.append(f"| {p} | {r['wall_s_per_step']:.3f} | {r['steps_per_s']:.3f} | {r['tokens_per_s']:.0f} | "
                     f"{r['cpu_s_per_step']:.3f} |")
    lines += ["", f"reference / blocked: **{ratio:.2f}x** the wall time per step.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(meta | {"paths": rows, "ratio": ratio}, indent=2) + "\n")
    Path(f"{args.out}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
