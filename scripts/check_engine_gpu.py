"""Greedy outputs of the engine on the GPU (bf16, Pallas kernels where the shapes allow) against
the same engine's CPU float32 outputs, for the tiny presets and the three schedules; the prompts,
engines and the two agreements (free-running, teacher-forced) are in `lp_jax.bench.agreement`.

    .venv/bin/python scripts/check_engine_gpu.py --make-expected   # on the CPU: writes the fixture
    PYTHONPATH=. python3 scripts/check_engine_gpu.py --out DIR     # on the GPU: compares, writes JSON + md

The fixture holds the prompts' seed, the CPU float32 outputs and the versions that made them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time

import jax

from lp_jax.bench.agreement import (MAX_TOKENS, NUM_REQUESTS, PRESETS, SCHEDULES, SEED, agreement, make_llm,
                                    serve, teacher_forced)

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "engine_cpu_f32.json"


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
