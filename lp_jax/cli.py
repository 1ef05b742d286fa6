"""`lp-jax`: the command line. Subcommands register themselves in COMMANDS."""

from __future__ import annotations

import argparse
import sys

from lp_jax.config import PRESETS, get_preset


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def cmd_info(args) -> int:
    """Architecture, parameter counts and bytes per expert / per layer of a preset."""
    try:
        cfg = get_preset(args.model)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    b = 2  # bf16
    window = f"sliding window {cfg.sliding_window} on {cfg.layer_types.count('sliding')} of {cfg.num_layers} layers" \
        if cfg.sliding_window else "full attention on every layer"
    lines = [
        f"{cfg.name} ({cfg.arch})",
        f"  layers {cfg.num_layers}, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}",
        f"  attention: {cfg.num_heads} query heads, {cfg.num_kv_heads} KV heads, head dim {cfg.head_dim}, {window}"
        + (", learned sinks" if cfg.attention_sinks else "") + (", q/k norm" if cfg.qk_norm else "")
        + (", biases" if cfg.attention_bias else ""),
        f"  rope theta {cfg.rope_theta:g}" + (f", YaRN x{cfg.rope_scaling.factor:g}" if cfg.rope_scaling else "")
        + f", max positions {cfg.max_position_embeddings}",
    ]
    if cfg.is_moe:
        lines.append(f"  MoE: {cfg.num_experts} experts, top-{cfg.num_experts_per_tok}, expert hidden "
                     f"{cfg.moe_intermediate_size}, router {cfg.router}, activation {cfg.activation}")
    else:
        lines.append(f"  dense MLP hidden {cfg.intermediate_size}, activation {cfg.activation}")
    lines += [
        f"  total parameters:  {_fmt_params(cfg.total_params())} ({cfg.total_params():,})",
        f"  active per token:  {_fmt_params(cfg.active_params())} (attention, router, top-k experts, norms and "
        f"unembedding; embedding lookup not counted)",
        f"                     {_fmt_params(cfg.active_params(count_embedding=True))} counting the embedding too "
        f"(published figures: Qwen3-30B-A3B 3.3B counts both; GPT-OSS-20B 3.6B counts only the unembedding)",
        f"  bytes per layer (bf16): {cfg.layer_params() * b / 2**20:,.1f} MiB "
        f"(attention {cfg.attention_params_per_layer() * b / 2**20:,.1f} MiB)",
    ]
    if cfg.is_moe:
        lines.append(f"  bytes per expert (bf16): {cfg.expert_params() * b / 2**20:,.2f} MiB; all experts of one "
                     f"layer {cfg.num_experts * cfg.expert_params() * b / 2**20:,.1f} MiB")
    lines.append(f"  whole model (bf16): {cfg.total_params() * b / 2**30:,.1f} GiB")
    print("\n".join(lines))
    return 0


def cmd_generate(args) -> int:
    """Generate from random prompts on a preset with random weights (a smoke run)."""
    import numpy as np

    import lp_jax

    cfg = get_preset(args.model)
    rng = np.random.default_rng(args.seed)
    prompts = [[int(t) for t in rng.integers(0, cfg.vocab_size, n)]
               for n in rng.integers(1, args.max_prompt + 1, args.num_prompts)]
    llm = lp_jax.LLM(cfg, args.schedule, max_model_len=args.max_prompt + args.max_tokens, seed=args.seed,
                     max_num_seqs=max(8, args.num_prompts))
    for out in llm.generate(prompts, max_tokens=args.max_tokens):
        print(f"request {out.request_id}: prompt {len(out.prompt_token_ids)} tokens -> {out.token_ids}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lp-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="architecture and parameter counts of a model preset")
    p.add_argument("--model", default="qwen3-30b-a3b", help=f"preset name: {', '.join(PRESETS)}")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="generate from random prompts (random weights; a smoke run)")
    p.add_argument("--model", default="tiny-qwen3-moe", help=f"preset name: {', '.join(PRESETS)}")
    p.add_argument("--schedule", default="layered", choices=["prefill_first", "chunked", "layered"])
    p.add_argument("--num-prompts", type=int, default=4, help="number of random prompts")
    p.add_argument("--max-prompt", type=int, default=64, help="longest prompt, tokens")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens to generate per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
