"""Greedy outputs of the engine on the GPU (bf16, Pallas kernels where the shapes allow) against
the same engine's CPU float32 outputs, for the tiny presets and the three schedules.

    .venv/bin/python scripts/check_engine_gpu.py --make-expected   # on the CPU: writes the fixture
    PYTHONPATH=. python3 scripts/check_engine_gpu.py --out DIR     # on the GPU: compares, writes JSON + md

Two agreements are reported. Free-running: share of output tokens equal at the same position
when each side continues its own text (one flipped near-tie changes the rest of that request).
Teacher-forced: for every position k of every request, the engine is given the prompt plus the
CPU's first k tokens and asked for one token; share equal to the CPU's token k (no cascade).
The fixture holds the prompts' seed, the CPU float32 outputs and the versions that made them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import sys
import time

import jax
import numpy as np

import lp_jax
from lp_jax.model import init_params
from lp_jax.model.config import get_preset

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "engine_cpu_f32.json"
# The tiny presets' head dim (16) is below what the attention kernel tiles, so two variants with
# head dim 64 and 8 query heads per KV head run the engine through the Pallas attention kernel too
# (the GPT-OSS one with its sinks and sliding window).
ATTENTION_VARIANTS = {f"{base}-hd64": base for base in ("tiny-qwen3-moe", "tiny-gpt-oss")}
PRESETS = ["tiny-qwen3-moe", "tiny-gpt-oss", "tiny-qwen3", *ATTENTION_VARIANTS]
SCHEDULES = ["prefill_first", "chunked", "layered"]
NUM_REQUESTS, MAX_TOKENS, CONTEXT, SEED = 32, 8, 640, 17
ENGINE = dict(max_model_len=CONTEXT, max_num_seqs=32, max_num_batched_tokens=256, token_budget=128,
              row_buckets=(32, 128, 288))


def prompts_for(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(SEED)
    return [[int(t) for t in rng.integers(0, vocab, n)] for n in rng.integers(1, 601, NUM_REQUESTS)]


def model_config(name: str):
    if name in ATTENTION_VARIANTS:
        return dataclasses.replace(get_preset(ATTENTION_VARIANTS[name]), name=name, head_dim=64, num_heads=8,
                                   num_kv_heads=1)
    return get_preset(name)


def make_llm(name: str, schedule: str, dtype: str, backend: str | None = None):
    cfg = model_config(name)
    params = init_params(cfg, seed=SEED, dtype=dtype, stacked=True)
    return lp_jax.LLM(cfg, schedule, params=params, dtype=dtype, backend=backend, num_groups=3, **ENGINE)


def serve(llm) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts_for(llm.model_config.vocab_size), max_tokens=MAX_TOKENS)]


def teacher_forced(llm, expected: list[list[int]]) -> float:
    prompts = prompts_for(llm.model_config.vocab_size)
    forced = [p + e[:k] for p, e in zip(prompts, expected) for k in range(len(e))]
    got = [o.token_ids[0] for o in llm.generate(forced, max_tokens=1)]
    want = [t for e in expected for t in e]
    return sum(g == w for g, w in zip(got, want)) / len(want)


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    return same / sum(len(r) for r in a)


def make_expected() -> None:
    data = {"jax": jax.__version__, "date": datetime.date.today().isoformat(), "seed": SEED,
            "max_tokens": MAX_TOKENS, "outputs": {name: serve(make_llm(name, "chunked", "float32", "reference"))
                                                  for name in PRESETS}}
    FIXTURE.write_text(json.dumps(data))
    print(f"wrote {FIXTURE}")


def check(out: pathlib.Path) -> bool:
    expected = json.loads(FIXTURE.read_text())["outputs"]
    device = jax.devices()[0].device_kind
    rows, ok = [], True
    for name in PRESETS:
        got = {}
        for schedule in SCHEDULES:
            start = time.perf_counter()
            llm = make_llm(name, schedule, "bfloat16")
            got[schedule] = serve(llm)
            forced = teacher_forced(llm, expected[name])
            vs_cpu = agreement(got[schedule], expected[name])
            vs_first = agreement(got[schedule], got["prefill_first"])
            rows.append(dict(model=name, schedule=schedule, free_running_vs_cpu_f32=vs_cpu,
                             teacher_forced_vs_cpu_f32=forced, free_running_vs_prefill_first_gpu=vs_first,
                             seconds=time.perf_counter() - start))
            ok &= forced >= 0.95 and vs_first >= 0.95
            print(rows[-1], flush=True)
    result = {"device": device, "date": datetime.date.today().isoformat(), "jax": jax.__version__,
              "dtype": "bfloat16", "requests": NUM_REQUESTS, "max_tokens": MAX_TOKENS, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"engine_gpu_agreement_{device.replace(' ', '_')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = [f"# Engine on {device} (bf16) vs CPU float32, {result['date']}", "",
          f"{NUM_REQUESTS} requests, prompts 1-600 tokens, {MAX_TOKENS} greedy tokens each. Free-running: share of "
          "output tokens equal at the same position, each side continuing its own text. Teacher-forced: the "
          "engine given the prompt plus the CPU's first k tokens, asked for token k.", "",
          "| model | schedule | free-running vs CPU f32 | teacher-forced vs CPU f32 | free-running vs "
          "prefill_first on this GPU | wall s (start-up included) |",
          "| --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['model']} | {r['schedule']} | {r['free_running_vs_cpu_f32']:.1%} | "
           f"{r['teacher_forced_vs_cpu_f32']:.1%} | {r['free_running_vs_prefill_first_gpu']:.1%} | "
           f"{r['seconds']:.1f} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-expected", action="store_true", help="run on the CPU in float32 and write the fixture")
    ap.add_argument("--out", default="benchmarks/results", help="folder for the results (GPU run)")
    args = ap.parse_args()
    if args.make_expected:
        make_expected()
        return 0
    return 0 if check(pathlib.Path(args.out)) else 1


if __name__ == "__main__":
    sys.exit(main())
