"""Expert coverage of a routing profile (`lp-jax routing`): the share of a layer's experts one
call loads, against the decode batch size and against the prefill chunk size of one prompt,
as a table (results.md, coverage.json) and a plot (coverage.png), with the paper's figures,
the analytic expectation (`routing_stats`) and iid uniform routing beside the measurement.

Coverage = distinct experts that receive a row / E, a fraction, averaged over layers and draws.
Decode batch of B: B distinct requests, one token each at a random position. Chunk of c: one
prompt of P tokens cut into chunks of c tokens (c = P: the whole prompt in one pass), every
chunk counted; "loads per prompt" = sum over its chunks of the experts loaded / those of one
pass (the paper's 764.1 / 57.1 GB = 13.4 for sixteen 512-token chunks of 8192 tokens).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import jax
import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lp_jax.model.config import ModelConfig  # noqa: E402
from lp_jax.model.routing import PAPER_COVERAGE, RoutingProfile, count_distinct, sampled_ids  # noqa: E402
from lp_jax.model.routing_stats import routing_stats  # noqa: E402


@dataclass(frozen=True)
class CoveragePoint:
    """One measured size: axis "decode" (size = batch size B) or "chunk" (size = chunk tokens
    of one prompt of prompt_tokens); fractions of E; samples = (layer, draw) pairs averaged."""

    axis: str
    size: int
    measured: float
    analytic: float | None
    uniform_iid: float
    samples: int
    prompt_tokens: int = 0


def uniform_iid_coverage(model: ModelConfig, tokens: int) -> float:
    """Coverage of `tokens` tokens whose K experts are drawn uniformly and independently."""
    E, K = model.num_experts, model.num_experts_per_tok
    return 1.0 - (1.0 - K / E) ** tokens


def sampled_coverage(model: ModelConfig, profile: RoutingProfile, batch_sizes, chunk_sizes, prompt_tokens: int,
                     draws: int, seed: int = 0, progress=lambda: None) -> list[CoveragePoint]:
    """Coverage from the routing sampler alone (the ids the engine would route; no weights, so
    any preset size): `draws` disjoint decode batches of each size and `draws` prompts.
    progress() is called after each prompt."""
    E, K, L = model.num_experts, model.num_experts_per_tok, model.num_layers
    stats = None if profile.uses_router else routing_stats(profile, E, K)
    rng = np.random.default_rng(seed)
    points = []
    most = max(batch_sizes, default=0)
    if most:
        ids = sampled_ids(profile, E, K, L, rng.integers(0, 2**31 - 1, most * draws), rng.integers(0, 4096, most * draws))
        for B in batch_sizes:
            counts = [count_distinct(ids[:, i * B:(i + 1) * B], E) for i in range(draws)]
            points.append(CoveragePoint("decode", B, float(np.mean(counts)) / E,
                                        stats.expected_coverage(B) if stats else None,
                                        uniform_iid_coverage(model, B), L * draws))
    per_chunk = {c: [] for c in chunk_sizes}
    for _ in range(draws if chunk_sizes else 0):
        ids = sampled_ids(profile, E, K, L, np.full(prompt_tokens, rng.integers(0, 2**31 - 1)), np.arange(prompt_tokens))
        for c in chunk_sizes:
            per_chunk[c] += [count_distinct(ids[:, a:a + c], E) for a in range(0, prompt_tokens, c)]
        progress()
    for c in chunk_sizes:
        expected = None
        if stats:
            lengths = [min(c, prompt_tokens - a) for a in range(0, prompt_tokens, c)]
            expected = float(np.mean([stats.expected_coverage(0, [n]) for n in lengths]))
        points.append(CoveragePoint("chunk", c, float(np.mean(per_chunk[c])) / E, expected,
                                    uniform_iid_coverage(model, c), len(per_chunk[c]) * L, prompt_tokens))
    return points


def engine_coverage(model: ModelConfig, profile: RoutingProfile, batch_sizes, chunk_sizes, prompt_tokens: int,
                    draws: int, seed: int = 0, progress=lambda: None, params: dict | None = None
                    ) -> list[CoveragePoint]:
    """Coverage measured through the engine's real layer steps (float32 weights: `params`, stacked,
    e.g. a trained checkpoint's, or random ones; for models small enough for the CPU): the
    distinct experts each call's MoE layers report.
    Decode: B requests of 4-token prompts, then `draws` decode iterations of all B. Chunks: one
    engine per chunk size c (chunked prefill with a budget of c, one request at a time), `draws`
    prompts of prompt_tokens random tokens, every chunk's call counted. progress() after each."""
    import lp_jax
    from lp_jax.model.init import init_params

    E, L = model.num_experts, model.num_layers
    stats = None if profile.uses_router else routing_stats(profile, E, model.num_experts_per_tok)
    params = init_params(model, seed, "float32", stacked=True) if params is None else params
    rng = np.random.default_rng(seed)
    points = []
    if batch_sizes:
        most = max(batch_sizes)
        llm = lp_jax.LLM(model, "prefill_first", params=params, routing=profile.name, trace=True, seed=seed,
                         max_num_seqs=most, max_model_len=draws + 8, max_prefill_tokens=4 * most,
                         max_cohort_tokens=4 * most, row_buckets=(most, 4 * most))
        for B in batch_sizes:
            llm.engine.records.clear()
            llm.generate([[int(t) for t in rng.integers(0, model.vocab_size, 4)] for _ in range(B)],
                         max_tokens=draws + 1, ignore_eos=True)
            counts = [seg.expert_counts_L for rec in llm.engine.records if len(rec.decode_ids) == B and not rec.prefill
                      for seg in rec.segments]
            points.append(CoveragePoint("decode", B, float(np.mean(counts)) / E,
                                        stats.expected_coverage(B) if stats else None,
                                        uniform_iid_coverage(model, B), len(counts) * L))
            progress()
        del llm
    for c in chunk_sizes:
        llm = lp_jax.LLM(model, "chunked", params=params, routing=profile.name, trace=True, seed=seed, max_num_seqs=1,
                         token_budget=c, max_prefill_tokens=c, max_cohort_tokens=c, max_lone_prompt_tokens=c,
                         max_model_len=prompt_tokens + 2, row_buckets=(c,))
        prompts = [[int(t) for t in rng.integers(0, model.vocab_size, prompt_tokens)] for _ in range(draws)]
        llm.generate(prompts, max_tokens=1, ignore_eos=True)
        counts = [seg.expert_counts_L for rec in llm.engine.records if rec.prefill for seg in rec.segments]
        expected = None
        if stats:
            lengths = [min(c, prompt_tokens - a) for a in range(0, prompt_tokens, c)]
            expected = float(np.mean([stats.expected_coverage(0, [n]) for n in lengths]))
        points.append(CoveragePoint("chunk", c, float(np.mean(counts)) / E, expected, uniform_iid_coverage(model, c),
                                    len(counts) * L, prompt_tokens))
        del llm
        progress()
    return points


def loads_per_prompt(points: list[CoveragePoint]) -> dict[int, float]:
    """chunk size -> expert loads of the whole prompt relative to one pass (measured)."""
    chunks = {p.size: p for p in points if p.axis == "chunk"}
    whole = next((p for p in chunks.values() if p.size >= p.prompt_tokens), None)
    if whole is None:
        return {}
    return {c: -(-p.prompt_tokens // c) * p.measured / whole.measured for c, p in chunks.items()}


def write_report(out_dir: str, model: ModelConfig, profile: RoutingProfile, points: list[CoveragePoint],
                 method: str) -> list[str]:
    """results.md, coverage.json and coverage.png in out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    ratios = loads_per_prompt(points)
    device = device_label()
    data = dict(model=model.name, device=device, experts=model.num_experts, top_k=model.num_experts_per_tok,
                layers=model.num_layers, routing=profile.name, profile=dataclasses.asdict(profile), method=method,
                points=[dataclasses.asdict(p) for p in points],
                loads_per_prompt={str(c): r for c, r in ratios.items()},
                paper=[dataclasses.asdict(t) for t in PAPER_COVERAGE])
    paths = [os.path.join(out_dir, n) for n in ("results.md", "coverage.json", "coverage.png")]
    with open(paths[1], "w") as fh:
        json.dump(data, fh, indent=2)
    with open(paths[0], "w") as fh:
        fh.write(markdown(model, profile, points, method, ratios, device))
    figure(model, profile, points, method, device).savefig(paths[2], dpi=120)
    plt.close("all")
    return paths


def device_label() -> str:
    """The device the engine's steps ran on, e.g. 'NVIDIA H200 (gpu)' or 'cpu (cpu)'."""
    d = jax.devices()[0]
    return f"{d.device_kind} ({d.platform})"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def markdown(model, profile, points, method: str, ratios: dict[int, float], device: str) -> str:
    paper = {(t.kind, t.tokens): t for t in PAPER_COVERAGE}
    lines = [f"# Expert coverage: {model.name} (E={model.num_experts}, top-{model.num_experts_per_tok}, "
             f"{model.num_layers} layers), routing {profile.name}", "",
             f"Measured on {device} by {method}. Coverage = distinct experts loaded / E, mean over layers and draws; "
             "analytic = `routing_stats`; uniform iid = K of E drawn uniformly per token; paper = Qwen3-30B-A3B "
             "(E=128, top-8; arXiv 2510.08055 Table 1 and its code's 8192-token arXiv prompt).", ""]
    for axis, title, unit in (("decode", "decode batch (B distinct requests, one token each)", "B"),
                              ("chunk", "prefill chunks of one prompt", "chunk tokens")):
        rows = [p for p in points if p.axis == axis]
        if not rows:
            continue
        extra = " | loads per prompt vs one pass" if axis == "chunk" else ""
        lines += [f"## Coverage vs {title}" + (f" of {rows[0].prompt_tokens} tokens" if axis == "chunk" else ""), "",
                  f"| {unit} | measured | analytic | uniform iid | paper | samples{extra} |",
                  "|---|---|---|---|---|---|" + ("---|" if extra else "")]
        for p in rows:
            ref = paper.get(("decode" if axis == "decode" else "prompt", p.size))
            cells = [str(p.size), _pct(p.measured), _pct(p.analytic), _pct(p.uniform_iid),
                     _pct(ref.coverage) if ref else "-", str(p.samples)]
            if extra:
                cells.append(f"{ratios[p.size]:.2f}x" if p.size in ratios else "-")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(model, profile, points, method: str, device: str):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, axis, kind, xlabel in ((axes[0], "decode", "decode", "decode batch size B (distinct requests)"),
                                   (axes[1], "chunk", "prompt", "prefill chunk of one prompt (tokens)")):
        rows = [p for p in points if p.axis == axis]
        x = [p.size for p in rows]
        ax.plot(x, [100 * p.measured for p in rows], "o-", label=f"measured ({profile.name})")
        if any(p.analytic is not None for p in rows):
            ax.plot(x, [100 * p.analytic for p in rows], ":", color="gray", label="analytic (routing_stats)")
        ax.plot(x, [100 * p.uniform_iid for p in rows], "--", color="tab:green", label="uniform iid")
        ref = [t for t in PAPER_COVERAGE if t.kind == kind]
        ax.plot([t.tokens for t in ref], [100 * t.coverage for t in ref], "r*", markersize=11,
                label="paper: Qwen3-30B-A3B")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x], fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("experts loaded per layer (% of E)")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    prompt = next((p.prompt_tokens for p in points if p.axis == "chunk"), 0)
    axes[1].set_title(f"one prompt of {prompt} tokens", fontsize=9)
    axes[0].set_title("one token per request", fontsize=9)
    fig.suptitle(f"{model.name} (E={model.num_experts}, top-{model.num_experts_per_tok}): expert coverage, "
                 f"routing {profile.name}; {device}, {method}", fontsize=10)
    fig.tight_layout()
    return fig
