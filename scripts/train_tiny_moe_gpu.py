"""One GPU command for the tiny Shakespeare MoE: size the run to a wall budget, train it twice from
scratch, compare the two held-out losses, sample it, measure its routing, tar the checkpoint.

    PYTHONPATH=. python3 scripts/train_tiny_moe_gpu.py --out "$OUT"      # about 3.5 minutes on one H200

Needs the genai-perf wheel in .whl/ (git-ignored: carry it; the GPU machine has no network).
Stages, each a child process under its own time limit, logged with timestamps to <out>/driver.log:

1. probe: `train_tiny_moe.py --time-steps` compiles the training step and times it;
2. --steps chosen so that two concurrent runs fit the budget (rounded down to a multiple of 100,
   within [--min-steps, --max-steps]); then runs 1 and 2 of `train_tiny_moe.py`, the same command
   line but for their output folders, side by side on the one GPU;
3. reproduction.json / .md: the two held-out losses (nats per token, bits per byte), their
   relative difference against the 2 % asked;
4. `lp-jax routing` (the engine's layer steps with the checkpoint's weights) and
   `scripts/tiny_moe_routing.py` (the router on held-out Shakespeare) on run 1's checkpoint;
5. packing (a device command returns at most 8 files): into --out go tiny-shakespeare-moe.tar.gz
   (run 1's folder: checkpoint, loss curve, summary with the engine's greedy samples),
   results.tar.gz (every stage's logs and outputs, run 2's summary and loss curve; not run 2's
   weights nor the orbax copies), and driver.log, reproduction.md, probe.json as they are.

Everything runs through the reference kernels (LP_JAX_KERNELS=reference): the model is float32,
which the Pallas kernels do not take; training uses the blocked expert path (see
train_tiny_moe.py --experts-path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train_tiny_moe.py"
# The model and batch of the GPU run (steps and warm-up are sized at run time).
MODEL_ARGS = ["--layers", "6", "--hidden", "192", "--experts", "16", "--top-k", "2", "--expert-hidden", "48",
              "--batch", "64", "--seq-len", "256", "--lr", "3e-3", "--eval-every", "50", "--block-m", "64"]
RESERVED_AFTER_TRAINING_S = 90  # full held-out pass, saving, greedy samples (~40 s), routing (~40 s), tar
FALLBACK_STEPS = 400  # if the probe fails or overruns (the runs then show why)
CACHED_COMPILE_S = 5  # a run's training step comes from the probe's persistent compilation cache
CONCURRENCY_SLOWDOWN = 2.0  # two runs share the GPU: assume each step takes twice as long


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="folder for the packed results (created; must be empty); the stages work in a temporary folder")
    p.add_argument("--budget-s", type=float, default=200.0, help="wall seconds for the whole command (sizes --steps)")
    p.add_argument("--hard-limit-s", type=float, default=480.0,
                   help="stages still running this long after the start are stopped (under the 600 s a device "
                        "command may run)")
    p.add_argument("--min-steps", type=int, default=200)
    p.add_argument("--max-steps", type=int, default=800, help="cap (about 7 epochs of the training split)")
    p.add_argument("--steps", type=int, default=0, help="skip the probe and train this many steps")
    p.add_argument("--probe-steps", type=int, default=20)
    p.add_argument("--extra", default="", help="more train_tiny_moe.py arguments (CPU smoke tests: a tiny model)")
    p.add_argument("--routing-args", default="--batch-sizes 1,2,4,8,16,32,64 --chunk-sizes 64,512,2048 --draws 2",
                   help="lp-jax routing arguments")
    p.add_argument("--text-routing-args", default="--draws 8", help="scripts/tiny_moe_routing.py arguments")
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"error: --out {args.out} is not empty")
    if args.hard_limit_s < args.budget_s + 60:
        raise SystemExit("error: --hard-limit-s must be at least --budget-s + 60")
    if not 1 <= args.min_steps <= args.max_steps:
        raise SystemExit("error: need 1 <= --min-steps <= --max-steps")
    return args


class Driver:
    def __init__(self, out: Path, budget_s: float):
        self.out, self.budget_s, self.t0 = out, budget_s, time.time()
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "driver.log", "a")
        self.env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                        LP_JAX_KERNELS="reference", XLA_PYTHON_CLIENT_MEM_FRACTION="0.30",
                        PYTHONUNBUFFERED="1",
                        # the probe's compiled training step serves both runs (same model and batch)
                        JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp(prefix="lp_jax_tiny_moe_cache_"),
                        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

    def elapsed(self) -> float:
        return time.time() - self.t0

    def log(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {text}"
        print(line, file=sys.stderr, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        self.log(f"{name}: {' '.join(map(str, cmd))}")
        return subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                stderr=open(self.out / f"{name}.stderr.log", "w"), text=True)

    def finish(self, name: str, proc: subprocess.Popen, timeout_s: float) -> str | None:
        """stdout of a started child, or None (logged) if it failed or ran past timeout_s."""
        try:
            stdout, _ = proc.communicate(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self.log(f"{name}: killed after its {timeout_s:.0f} s limit (see {name}.stderr.log)")
            return None
        (self.out / f"{name}.stdout.log").write_text(stdout)
        if proc.returncode != 0:
            self.log(f"{name}: failed, exit status {proc.returncode} (see {name}.stderr.log)")
            return None
        self.log(f"{name}: done")
        return stdout


def choose_steps(probe: dict, left_s: float, min_steps: int, max_steps: int) -> tuple[int, float]:
    """(steps, training seconds they are sized for): what two concurrent runs can do in what is left
    once a run's start-up (as the probe measured it, 30 % slower for sharing the host) and the
    stages after training are paid."""
    train_s = left_s - 1.3 * probe["startup_s"] - CACHED_COMPILE_S - RESERVED_AFTER_TRAINING_S
    steps = int(train_s / (CONCURRENCY_SLOWDOWN * probe["step_s"])) // 100 * 100
    return max(min_steps, min(max_steps, steps)), train_s


def compare(summaries: list[dict]) -> dict:
    """The two runs' held-out figures and their relative difference (the Done-when asks <= 2 %)."""
    nats = [s["heldout_nats_per_token"] for s in summaries]
    bpb = [s["heldout_bits_per_byte"] for s in summaries]
    rel = abs(nats[1] - nats[0]) / nats[0]
    return {"heldout_nats_per_token": nats, "heldout_bits_per_byte": bpb, "relative_difference": rel,
            "within_2_percent": rel <= 0.02, "command": summaries[0]["command"], "device": summaries[0]["device"],
            "train_wall_s": [s["train_wall_s"] for s in summaries]}


def reproduction_markdown(result: dict) -> str:
    lines = ["# tiny-shakespeare-moe: two GPU runs of one training command", "",
             f"Command (each run, its own --out): `{result['command']}`; device {result['device']}; "
             "the two ran side by side on it.", "",
             "| run | held-out nats per token | held-out bits per byte | training wall s |", "|---|---|---|---|"]
    for i in range(2):
        lines.append(f"| {i + 1} | {result['heldout_nats_per_token'][i]:.5f} | "
                     f"{result['heldout_bits_per_byte'][i]:.5f} | {result['train_wall_s'][i]} |")
    lines += ["", f"Relative difference of the held-out losses: {result['relative_difference']:.3%} "
              f"(asked: within 2 %: {'yes' if result['within_2_percent'] else 'NO'}).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lp_jax_tiny_moe_gpu_"))
    d = Driver(work, args.budget_s)
    try:
        return run_stages(args, d, work)
    finally:
        pack(args.out, work, d)


def run_stages(args, d: Driver, work: Path) -> int:
    py = sys.executable
    model_args = MODEL_ARGS + args.extra.split()
    steps = args.steps
    if not steps:
        probe_cmd = [py, TRAIN, *model_args, "--steps", "1000", "--time-steps", str(args.probe_steps)]
        stdout = d.finish("probe", d.start("probe", probe_cmd), timeout_s=0.5 * args.budget_s)
        if stdout is None:
            steps = max(args.min_steps, min(args.max_steps, FALLBACK_STEPS))
            d.log(f"probe gave no timing -> --steps {steps}")
        else:
            probe = json.loads(stdout.strip().splitlines()[-1])
            steps, train_s = choose_steps(probe, args.budget_s - d.elapsed(), args.min_steps, args.max_steps)
            d.log(f"probe: {probe}; {train_s:.0f} s left for training -> --steps {steps}")
            (work / "probe.json").write_text(json.dumps(probe | {"chosen_steps": steps}, indent=2) + "\n")
    train_args = [*model_args, "--steps", str(steps), "--warmup", str(max(1, steps // 20))]
    runs = [work / f"run{i}" for i in (1, 2)]
    procs = [d.start(f"train{i + 1}", [py, TRAIN, *train_args, "--out", run / "model", "--orbax-dir", run / "orbax"])
             for i, run in enumerate(runs)]
    deadline = args.hard_limit_s - 60  # an overrun costs the budget, not the runs; routing keeps 60 s
    ok = [d.finish(f"train{i + 1}", proc, deadline - d.elapsed()) is not None for i, proc in enumerate(procs)]
    summaries = [json.loads((run / "model" / "train_summary.json").read_text()) if good else None
                 for run, good in zip(runs, ok)]
    if all(summaries):
        result = compare(summaries)
        (work / "reproduction.json").write_text(json.dumps(result, indent=2) + "\n")
        (work / "reproduction.md").write_text(reproduction_markdown(result))
        d.log(f"reproduction: held-out {result['heldout_nats_per_token']} nats per token, "
              f"{result['heldout_bits_per_byte']} bits per byte, relative difference {result['relative_difference']:.3%}")
    if summaries[0] is None:
        return 1
    model = runs[0] / "model"
    routing = [
        d.start("routing", [py, "-m", "lp_jax.cli", "routing", "--model", model, "--routing", "uniform",
                            "--prompt-tokens", "2048", *args.routing_args.split(), "--no-progress",
                            "--out", work / "routing_coverage_tiny-shakespeare-moe"]),
        d.start("text_routing", [py, ROOT / "scripts" / "tiny_moe_routing.py", "--model", model,
                                 *args.text_routing_args.split(), "--out", work / "tiny_moe_routing_gpu"]),
    ]
    routing_deadline = min(max(args.budget_s - 10, d.elapsed() + 45), args.hard_limit_s - 10)
    for name, proc in zip(("routing", "text_routing"), routing):
        d.finish(name, proc, routing_deadline - d.elapsed())
    return 0 if all(summaries) else 1


def pack(out: Path, work: Path, d: Driver) -> None:
    """At most 5 files into out (a device command returns 8 at most): run 1's model folder as
    tiny-shakespeare-moe.tar.gz, everything else but the weights of run 2 and the orbax copies as
    results.tar.gz, and driver.log, reproduction.md, probe.json as they are."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(d.env["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    model = work / "run1" / "model"
    if (model / "model.safetensors").exists():
        with tarfile.open(out / "tiny-shakespeare-moe.tar.gz", "w:gz") as tar:
            tar.add(model, arcname="tiny-shakespeare-moe")
    skip = {work / "run1" / "model", work / "run1" / "orbax", work / "run2" / "orbax",
            work / "run2" / "model" / "model.safetensors"}
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
        tar.add(work, arcname="results", filter=lambda info: None if work / Path(info.name).relative_to("results")
                in skip else info)
    d.log(f"packed into {out}; total {d.elapsed():.0f} s")
    for name in ("driver.log", "reproduction.md", "probe.json"):
        if (work / name).exists():
            shutil.copy(work / name, out / name)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
