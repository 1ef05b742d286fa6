"""Write train_summary.json for a tiny-shakespeare-moe folder whose training run stopped after saving
its checkpoint but before its summary (e.g. a GPU run stopped at its time limit while sampling).

    .venv/bin/python scripts/summarize_tiny_moe.py FOLDER --command "..." --device "NVIDIA H200" --note "..."

Recomputes on this machine, from the saved weights and tokenizer: the held-out loss over all
held-out windows (nats per token, bits per byte), the expert shares per layer, the engine's greedy
samples (`lp_jax.LLM(folder)`); reads the training settings back from --command and the last
training loss from loss.csv. The summary says which figures were measured where.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--command", required=True, help="the train_tiny_moe.py command line that trained it")
    p.add_argument("--device", required=True, help="where it was trained")
    p.add_argument("--note", default="", help="what happened to the run")
    p.add_argument("--extra", default="{}", help="JSON object of further fields (e.g. the training run's own figures)")
    args = p.parse_args(argv)
    if (args.folder / "train_summary.json").exists():
        raise SystemExit(f"error: {args.folder / 'train_summary.json'} exists")

    import jax

    import train_tiny_moe as training
    from lp_jax.checkpoint import load_hf
    from lp_jax.checkpoint.tokenizer import load_tokenizer

    train_args = training.parse_args(shlex.split(args.command)[1:])
    config, params = load_hf(args.folder)
    tokenizer = load_tokenizer(args.folder)
    train_text, held_text = training.split_text(training.shakespeare_text(None))
    held_WS1 = training.windows(np.asarray(tokenizer.encode(held_text).ids, np.int32), train_args.seq_len + 1)
    token_bytes_V = np.array([len(tokenizer.decode([i]).encode()) for i in range(config.vocab_size)], np.int64)
    _, eval_nats = training.make_functions(config, training.make_optimizer(),
                                           training.experts_function("blocked", train_args.block_m))
    nats, bpb, loads_LE = training.evaluate(eval_nats, params, held_WS1, token_bytes_V, train_args.batch)
    with open(args.folder / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    train_tokens = len(tokenizer.encode(train_text).ids)
    samples = training.greedy_samples(args.folder, tokenizer)
    here = f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform})"
    summary = {
        "command": args.command, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(train_args).items()},
        "data": {"source": f"{training.GENAI_PERF}: {training.TEXT_IN_WHEEL}", "sha256": training.TEXT_SHA256,
                 "train_chars": len(train_text), "heldout_chars": len(held_text), "train_tokens": train_tokens,
                 "heldout_windows": int(len(held_WS1))},
        "parameters": config.total_params(), "active_parameters": config.active_params(),
        "final_train_nats_per_token": float(rows[-1]["train_nats_per_token"]),
        "heldout_nats_per_token": nats, "heldout_bits_per_byte": bpb,
        "expert_share_per_layer": np.round(loads_LE / loads_LE.sum(axis=1, keepdims=True), 4).tolist(),
        "device": args.device, "tokens_trained": train_args.steps * train_args.batch * train_args.seq_len,
        "epochs": round(train_args.steps * train_args.batch * train_args.seq_len / train_tokens, 2),
        "greedy_samples": samples, "note": args.note,
        "summary_written": f"scripts/summarize_tiny_moe.py on {here}, "
                           f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC: held-out figures, expert shares "
                           "and greedy samples measured there from the saved weights",
    } | json.loads(args.extra)
    (args.folder / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("heldout_nats_per_token", "heldout_bits_per_byte")}))
    for prompt, text in samples.items():
        print(f"--- {prompt!r}\n{prompt}{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
