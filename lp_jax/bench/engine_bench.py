"""Engine benchmark (issue 6): iterations of the whole model against their hardware floors.

One engine per run (random bf16 weights generated on the device, the kernels `dispatch` picks),
with a row-bucket ladder of only the sizes the cases need. In the same run, before the model
takes the memory: copy bandwidth (read + write of an elementwise op) and bf16 matmul rate.

Cases (each timed three ways over --reps iterations, after warm-ups):
- decode at batch 1/16/64/128, 2K context (context shortened to what the KV pool holds);
- one 8192-token prefill through the whole model;
- a layered mixed iteration: 64 decodes through every layer, an 8192-token cohort (4 prompts of
  2K) through one group of the layered rule (a middle group, so three layer ranges; each runs as
  the executor's power-of-two layer steps, `executor.layer_pieces`);
- a chunked mixed iteration: 64 decodes and one 512-token chunk (positions 1024..1535 of a 2K
  prompt) through every layer.

Times: device = the prepared iteration launched back to back (host work removed: rows built
once, so only launch costs remain, hidden behind device work); serial = build rows, launch,
wait for the tokens (the engine before pipelining); pipelined = build and launch iteration i+1,
then read iteration i's tokens (the engine's loop without its scheduler); engine (decode only)
= steady-state `Engine.step()`, scheduler and bookkeeping included. Host overhead = wall
(engine for decode, pipelined otherwise) - device, the device's own pace. On the GPU, a second
loop also records the kernels' time with CUPTI (`lp_jax.bench.kernel_times`): kernels + gaps = device.
CUPTI misses some kernels that XLA runs inside CUDA graphs (the whole-model steps' static layer
loop is one), so there kernels is a lower bound and gaps an upper bound.
Ceilings (`lp_jax.bench.ceilings`): copy bandwidth is the best of several methods (XLA elementwise,
XLA copy, torch's copy and add where torch has the GPU), the matmul rate the best of XLA's and
torch's, each the fastest of 20 timed runs after warm-up: a floor must not be lenient, and the
median of 10 varied from 2.08 to 2.49 TB/s between runs on one H100. Every row also states its
wall time over the floor at the datasheet's peaks (H100 SXM, H200; "unknown" elsewhere).

Floor of a call = max(bytes / copy bandwidth, FLOPs / matmul rate); bytes = distinct experts
actually routed to (counted by the step) x expert bytes + the other weights of its layers + K/V
read and written; FLOPs = 2 x rows x active parameters of its layers + attention (4 x visible
keys x H x A per row and layer). The LM head and sampling count once per iteration.
Decode requests start in the decode state with their pages allocated (the pool holds whatever
it holds: attention's cost does not depend on the values), so no prefill runs before them.

Then a 200-request layered run through `LLM.generate` (prompts 64-2048 tokens, 8-64 output
tokens, eos ignored): its wall time and the compilations it caused (must be 0).

    PYTHONPATH=. XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python3 scripts/bench_engine.py --model qwen3-30b-a3b --out-dir DIR
    .venv/bin/python scripts/bench_engine.py --model tiny-qwen3-moe --out-dir /tmp/bench   # CPU smoke test

Writes engine_<device>.json and .md into --out-dir after every case (one file for all models
run into that folder; a model's entry is replaced when it is run again).

Its parts, in lp_jax/bench/: ceilings, floors, plan_timing (the three times and the result row),
engine_cases, hlo (layer slices in the step's HLO) and engine_report (JSON and markdown).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import time
import traceback

import jax
import numpy as np

import lp_jax
from lp_jax.bench.ceilings import ceilings
from lp_jax.bench.ceilings import summary as ceilings_summary
from lp_jax.bench.engine_cases import decode_case, drain, mixed_case, prefill_case, serving_run
from lp_jax.bench.engine_report import device_slug, log, markdown, write
from lp_jax.bench.hlo import layer_slices

# Full-size and CPU smoke-test sizes (tokens); flags override them.
FULL = dict(context=2048, batches=(1, 16, 64, 128), prefill=8192, chunk=512, mixed_decodes=64, requests=200,
            reps=10, ceiling_mib=1024, matmul=8192)
CASES = ("decode", "prefill", "layered", "chunked", "serving")
SMOKE = dict(context=128, batches=(1, 4, 8), prefill=256, chunk=32, mixed_decodes=4, requests=24, reps=2,
             ceiling_mib=16, matmul=256)


def parse_value(text: str):
    """An XLA option's value from the command line: bool, int, float or string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def dump_hlo(llm, out_dir: pathlib.Path, bucket: int) -> dict:
    ex = llm.engine.executor
    hlo = ex._step_exe[ex.model.num_layers, bucket].as_text()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"step_{llm.model_config.name}_{bucket}.hlo.txt").write_text(hlo)
    found = layer_slices(hlo)
    log(f"layer slices in the {bucket}-row whole-model step (fusion kind: count, bytes per layer): {found}")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3-30b-a3b", help="a preset; tiny-* presets get CPU smoke-test sizes")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true",
                    help="decode at the mixed batch only (unless --batches), 2 reps, a quarter of the requests")
    ap.add_argument("--dtype", default=None, help="default bfloat16 on a GPU, float32 on the CPU")
    for k in ("context", "prefill", "chunk", "mixed_decodes", "requests", "reps"):
        ap.add_argument("--" + k.replace("_", "-"), type=int)
    ap.add_argument("--batches", help="comma-separated decode batches")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated subset of {', '.join(CASES)} (default: all)")
    ap.add_argument("--xla", action="append", default=[], metavar="NAME=VALUE",
                    help="an XLA option for the steps, e.g. xla_gpu_enable_dynamic_slice_fusion=true (repeatable)")
    ap.add_argument("--hlo", action="store_true",
                    help="write the smallest step's optimized HLO and count its layer slices")
    args = ap.parse_args(argv)
    chosen = set(args.cases.split(","))
    if not chosen <= set(CASES):
        ap.error(f"unknown case(s) {', '.join(sorted(chosen - set(CASES)))}; choose from {', '.join(CASES)}")

    sizes = dict(SMOKE if args.model.startswith("tiny") else FULL)
    sizes.update({k: v for k in sizes if (v := getattr(args, k, None)) is not None and k != "batches"})
    if args.batches:
        sizes["batches"] = tuple(int(b) for b in args.batches.split(","))
    if args.quick:
        sizes.update(reps=2, requests=max(8, sizes["requests"] // 4))
        if not args.batches:
            sizes["batches"] = (sizes["mixed_decodes"],)
    xla = tuple((k, parse_value(v)) for k, _, v in (o.partition("=") for o in args.xla))
    device = jax.devices()[0].device_kind
    dtype = args.dtype or ("bfloat16" if jax.devices()[0].platform == "gpu" else "float32")
    item = np.dtype(dtype).itemsize
    rng = np.random.default_rng(0)
    log(f"{device}, {datetime.date.today()}, jax {jax.__version__}, {args.model} in {dtype}, sizes {sizes}")

    ceil = ceilings(sizes["ceiling_mib"], sizes["matmul"])
    log(f"ceilings: {ceilings_summary(ceil)}")

    C, P, chunk, D = sizes["context"], sizes["prefill"], sizes["chunk"], sizes["mixed_decodes"]
    cohort = max(1, P // C)  # the layered mixed case's prompts, of about C tokens each
    seqs = max(max(sizes["batches"]), D + cohort)
    buckets = tuple(sorted({*sizes["batches"], D, chunk + D, P + seqs}))
    options = dict(dtype=dtype, max_num_seqs=seqs, max_prefill_tokens=P, max_cohort_tokens=P, token_budget=chunk + D,
                   max_model_len=max(P, C) + 64, row_buckets=buckets, compiler_options=xla)
    t0 = time.perf_counter()
    marks = {}

    def progress(done: int, total: int) -> None:
        marks.setdefault("weights", time.perf_counter())
        log(f"  compiled {done}/{total} executables, {time.perf_counter() - t0:.1f} s since start")

    llm = lp_jax.LLM(args.model, "layered", progress=progress, **options)
    engine = llm.engine
    entry = dict(model=args.model, device=device, date=datetime.date.today().isoformat(), jax=jax.__version__,
                 dtype=dtype, ceilings=ceil,
                 sizes={k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
                 weights_s=marks["weights"] - t0, compile_s=time.perf_counter() - marks["weights"],
                 executables=engine.executor.num_executables,
                 row_buckets=list(buckets), num_pages=engine.blocks.num_pages, page_size=engine.config.page_size,
                 xla_options=dict(xla), cases=[], notes=[])
    log(f"engine ready: {entry['weights_s']:.1f} s weights, {entry['compile_s']:.1f} s compiling; "
        f"{engine.blocks.num_pages} KV pages")
    out = pathlib.Path(args.out_dir)
    if args.hlo:
        entry["layer_slices"] = dump_hlo(llm, out, buckets[0])
    Z, margin = engine.config.page_size, 2 * sizes["reps"] + 8  # decode steps a case may run

    def fits(B: int, reserved_tokens: int = 0) -> int:
        """Context (<= C) at which B decoding requests fit the pool beside `reserved_tokens`."""
        return min(C, (engine.blocks.usable_pages - -(-reserved_tokens // Z) - 1) // B * Z - margin)

    cases = [("decode", f"decode B={B}", lambda B=B: decode_case(llm, B, fits(B), sizes["reps"], item, ceil, rng))
             for B in sizes["batches"]]
    cases += [("prefill", f"prefill {P}", lambda: prefill_case(llm, P, sizes["reps"], item, ceil, rng)),
              ("layered", "layered mixed", lambda: mixed_case(llm, "layered", D, fits(D, P), P, C, chunk,
                                                              sizes["reps"], item, ceil, rng)),
              ("chunked", "chunked mixed", lambda: mixed_case(llm, "chunked", D, fits(D, C), P, C, chunk,
                                                              sizes["reps"], item, ceil, rng)),
              ("serving", "serving", lambda: serving_run(llm, sizes["requests"], C, rng))]
    cases = [(name, run) for kind, name, run in cases if kind in chosen]
    ok = True
    for name, run in cases:
        log(f"{name} ...")
        try:
            row = run()
        except Exception as e:  # noqa: BLE001 - record it and go on to the next case
            traceback.print_exc()
            row, ok = dict(case=name, error=f"{type(e).__name__}: {e}"), False
            try:
                drain(llm)
            except Exception:  # noqa: BLE001 - the engine's device state may be gone (donated buffers)
                entry["notes"].append(f"after {name} failed the engine could not be drained; later cases may fail")
        entry["cases"].append(row)
        write(out, device, entry)
    short = [r for r in entry["cases"] if r.get("context", C) < C]
    if short:
        entry["notes"].append(f"the KV pool ({engine.blocks.usable_pages} pages) cannot hold every batch at {C} "
                              "tokens: " + ", ".join(f"{r['case']} ran at {r['context']}" for r in short))
    write(out, device, entry)
    log(markdown(json.loads((out / f"engine_{device_slug(device)}.json").read_text())))
    return 0 if ok else 1

