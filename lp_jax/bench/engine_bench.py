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
Ceilings are the best of 20 timed calls after warm-up: a floor must not be lenient, and the
median of 10 varied from 2.08 to 2.49 TB/s between runs on one H100.

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
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import lp_jax
from lp_jax.bench.kernel_times import KernelTimes
from lp_jax.engine import compile_counter
from lp_jax.engine.request import SamplingParams, Status
from lp_jax.engine.scheduler import IterationPlan, PrefillWork
from lp_jax.model.config import ModelConfig, even_split

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


def device_slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_").removeprefix("nvidia_")


def log(msg: str) -> None:
    print(msg, flush=True)


# --- ceilings ---------------------------------------------------------------------------------

def time_s(fn, reps: int) -> float:
    """Fastest seconds of fn() (which returns something to block on) over `reps` calls, after
    three warm-up calls."""
    for _ in range(3):
        jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def ceilings(mib: int, s: int, reps: int = 20) -> dict:
    """Copy bandwidth (B/s, read + write of `mib` MiB of bf16) and bf16 matmul rate (FLOP/s, s x s x s)."""
    n = mib * 2**20 // 2
    x = jax.random.normal(jax.random.key(0), (n,), jnp.bfloat16)
    add = jax.jit(lambda a: a + jnp.bfloat16(1))
    copy = 2 * x.nbytes / time_s(lambda: add(x), reps)
    del x
    a, b = (jax.random.normal(jax.random.key(i), (s, s), jnp.bfloat16) for i in (1, 2))
    dot = jax.jit(jnp.dot)
    rate = 2 * s**3 / time_s(lambda: dot(a, b), reps)
    return dict(copy_Bps=copy, matmul_flops=rate)


# --- floors -----------------------------------------------------------------------------------

def call_floor(cfg: ModelConfig, layers: tuple[int, int], keys_per_row: list[np.ndarray], expert_counts_L,
               item: int, ceil: dict) -> dict:
    """Floor of one layer-range call. keys_per_row: per sequence, the keys each of its rows sees
    (position + 1), and its rows are the K/V written; expert_counts_L: distinct experts per layer."""
    lo, hi = layers
    rows = sum(len(k) for k in keys_per_row)
    dense = cfg.attention_params_per_layer() + (cfg.router_params() if cfg.is_moe else cfg.ffn_params_per_layer())
    active = dense + (cfg.num_experts_per_tok * cfg.expert_params() if cfg.is_moe else 0)
    kv_token = 2 * cfg.num_kv_heads * cfg.head_dim * item  # K and V of one token in one layer
    bytes_, flops = 0.0, 0.0
    for layer in range(lo, hi):
        window = cfg.layer_window(layer)
        seen = [np.minimum(k, window) if window else k for k in keys_per_row]
        # Every key a sequence's rows see is read once (the largest row's context), each row's K/V written once.
        bytes_ += dense * item + kv_token * (sum(int(s.max()) for s in seen) + rows)
        flops += 2 * rows * active + 4 * cfg.num_heads * cfg.head_dim * sum(int(s.sum()) for s in seen)
    experts = float(np.asarray(expert_counts_L)[lo:hi].sum()) * cfg.expert_params() * item
    bytes_ += experts
    return dict(bytes=bytes_, expert_bytes=experts, flops=flops,
                floor_s=max(bytes_ / ceil["copy_Bps"], flops / ceil["matmul_flops"]))


def head_floor(cfg: ModelConfig, sampled: int, item: int, ceil: dict) -> float:
    w = cfg.vocab_size * cfg.hidden_size
    return max(w * item / ceil["copy_Bps"], 2 * sampled * w / ceil["matmul_flops"])


def plan_floor(cfg: ModelConfig, plan: IterationPlan, counts: list, item: int, ceil: dict) -> dict:
    """Floor of an iteration: its calls' floors + the LM head for the sampled rows."""
    calls, sampled = [], len(plan.decodes)
    for seg, expert_counts_L in zip(plan.segments(), counts):
        keys = [np.asarray([r.num_computed + 1]) for r in plan.decodes] if seg.decode else []
        if seg.prefill:
            keys += [np.arange(w.start + 1, w.end + 1) for w in plan.prefills]
        calls.append(call_floor(cfg, (seg.layer_lo, seg.layer_hi), keys, expert_counts_L, item, ceil))
    if plan.prefill_finishes_layers:
        sampled += sum(w.completes_prompt for w in plan.prefills)
    floor = sum(c["floor_s"] for c in calls) + head_floor(cfg, sampled, item, ceil)
    return dict(floor_ms=floor * 1e3, expert_GB=sum(c["expert_bytes"] for c in calls) / 1e9,
                bytes_GB=sum(c["bytes"] for c in calls) / 1e9, TFLOP=sum(c["flops"] for c in calls) / 1e12)


# --- requests placed straight into the engine ---------------------------------------------------

def placed(engine, prompt: list[int], computed: int, status: Status, max_tokens: int):
    """A request admitted as if `computed` of its tokens had been prefilled (pages allocated for
    them; their contents are whatever the pool holds)."""
    rid = engine.add_request(prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    req = engine.requests[rid]
    engine.state.admit(req)
    engine.blocks.allocate(rid, computed + 1)
    req.status, req.num_computed = status, computed
    return req


def random_prompt(rng, cfg: ModelConfig, n: int) -> list[int]:
    return rng.integers(0, cfg.vocab_size, n).tolist()


# --- timing of one plan -----------------------------------------------------------------------

def timed(fn, reps: int) -> tuple[float, float | None]:
    """(wall ms per call of fn() over `reps` calls, device busy ms per call: the CUPTI kernel
    time of a second loop of `reps` calls, or None where CUPTI is unavailable). Two loops,
    because CUPTI's per-launch bookkeeping slows the host by a few ms per iteration of ~3000
    kernels (measured: 12.7 -> 19.8 ms at decode batch 1): the wall loop runs without it. The
    windows start and end with an iteration in flight, so busy time is per call only on average."""
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    wall = (time.perf_counter() - t) / reps * 1e3
    if not KernelTimes.available():
        return wall, None
    try:
        with KernelTimes() as kt:
            for _ in range(reps):
                fn()
    except Exception as e:  # noqa: BLE001 - CUPTI missing or refused: the wall time still stands
        log(f"  CUPTI kernel timing failed ({type(e).__name__}: {e}); no kernel busy time")
        return wall, None
    if kt.dropped:
        log(f"  CUPTI returned {kt.dropped} broken kernel records (kernels launched from CUDA graphs); "
            "no kernel busy time")
        return wall, None
    return wall, kt.busy_ms / reps


def time_plan(ex, plan: IterationPlan, reps: int) -> dict:
    """device / serial / pipelined ms of one plan (see the module docstring) and its expert counts."""
    prep = ex.prepare(plan)

    def launched(n):
        for _ in range(n):
            flight = ex.launch(prep)
        return ex.fetch(flight)

    launched(2)
    t = time.perf_counter()
    result = launched(reps)
    device = (time.perf_counter() - t) / reps
    serial = []
    for _ in range(reps):
        t = time.perf_counter()
        ex.execute(plan)
        serial.append(time.perf_counter() - t)
    in_flight = [ex.dispatch(plan)]
    host = []  # per pipelined step: seconds building rows, in the launch calls, waiting for the tokens

    def pipelined_step():
        t0 = time.perf_counter()
        prepared = ex.prepare(plan)
        t1 = time.perf_counter()
        in_flight.append(ex.launch(prepared))
        t2 = time.perf_counter()
        ex.fetch(in_flight.pop(0))
        host.append((t1 - t0, t2 - t1, time.perf_counter() - t2))

    pipelined, busy = timed(pipelined_step, reps)
    ex.fetch(in_flight.pop())
    prepare_s, launch_s, wait_s = (statistics.median(h[i] for h in host[:reps]) for i in range(3))
    return dict(device_ms=device * 1e3, serial_ms=statistics.median(serial) * 1e3, pipelined_ms=pipelined,
                pipelined_busy_ms=busy, host_prepare_ms=prepare_s * 1e3, host_launch_ms=launch_s * 1e3,
                host_wait_ms=wait_s * 1e3,
                buckets=[int(pieces[0][2].tokens_T.shape[0]) for _, pieces, _, _ in prep.calls],
                step_calls=sum(len(pieces) for _, pieces, _, _ in prep.calls),
                counts=[s.expert_counts_L for s in result.segments])


def summarise(name: str, cfg, plan, timing: dict, item: int, ceil: dict, wall_key: str, **extra) -> dict:
    """One result row. Host overhead = wall - device: the time the host adds to the device's own
    pace (the prepared iteration launched back to back). The device's pace itself splits into
    kernel busy time (CUPTI) and launch gaps between its kernels."""
    floor = plan_floor(cfg, plan, timing.pop("counts"), item, ceil)
    wall, kind = timing[wall_key], wall_key.removesuffix("_ms")
    busy = timing.pop(kind + "_busy_ms")
    device = timing["device_ms"]
    row = dict(case=name, **extra, **timing, **floor, wall=kind, ratio=wall / floor["floor_ms"],
               device_ratio=device / floor["floor_ms"], host_overhead_ms=wall - device,
               host_overhead_pct=100 * (wall - device) / wall, kernel_busy_ms=busy,
               launch_gaps_ms=None if busy is None else device - busy)
    gaps = "" if busy is None else f", kernels {busy:.2f} ms + gaps {device - busy:.2f} ms"
    if "host_prepare_ms" in timing:
        gaps += (f"; pipelined step's host: rows {timing['host_prepare_ms']:.2f} ms, in launch calls "
                 f"{timing['host_launch_ms']:.2f} ms, waiting for tokens {timing['host_wait_ms']:.2f} ms (medians)")
    log(f"  {name}: wall {wall:.2f} ms ({kind}), device {device:.2f} ms{gaps}, serial "
        f"{timing['serial_ms']:.2f} ms, floor {floor['floor_ms']:.2f} ms, ratio {row['ratio']:.2f}, host overhead "
        f"{row['host_overhead_ms']:.2f} ms ({row['host_overhead_pct']:.1f}%)")
    return row


# --- cases ------------------------------------------------------------------------------------

def decode_case(llm, B: int, context: int, reps: int, item: int, ceil: dict, rng) -> dict:
    engine, cfg = llm.engine, llm.model_config
    reqs = [placed(engine, random_prompt(rng, cfg, context), context - 1, Status.DECODING, 2 * reps + 8)
            for _ in range(B)]
    plan = IterationPlan(cfg.num_layers, decodes=reqs)
    timing = time_plan(engine.executor, plan, reps)
    # The engine itself: steady-state steps (each dispatches one iteration and reads the last back).
    for _ in range(2):
        engine.step()
    spent, steps = engine.total_expert_bytes, []

    def step():  # counted: `timed` runs a second loop when CUPTI is there
        steps.append(engine.step())

    timing["engine_ms"], timing["engine_busy_ms"] = timed(step, reps)
    engine_experts = (engine.total_expert_bytes - spent) / len(steps)
    drain(llm)
    return summarise(f"decode B={B}", cfg, plan, timing, item, ceil, "engine_ms", batch=B, context=context,
                     engine_expert_GB=engine_experts / 1e9)


def prefill_case(llm, tokens: int, reps: int, item: int, ceil: dict, rng) -> dict:
    engine, cfg = llm.engine, llm.model_config
    req = placed(engine, random_prompt(rng, cfg, tokens), 0, Status.PREFILLING, 1)
    engine.blocks.allocate(req.request_id, tokens)
    plan = IterationPlan(cfg.num_layers, prefills=[PrefillWork(req, 0, tokens, 0)], prefill_layers=(0, cfg.num_layers))
    timing = time_plan(engine.executor, plan, reps)
    drain(llm)
    row = summarise(f"prefill {tokens}", cfg, plan, timing, item, ceil, "pipelined_ms", tokens=tokens)
    row["floor_rate_pct"] = 100 * row["floor_ms"] / row["pipelined_ms"]
    return row


def mixed_case(llm, schedule: str, decodes: int, context: int, prefill_tokens: int, prompt_len: int, chunk: int,
               reps: int, item: int, ceil: dict, rng) -> dict:
    """decodes at `context` tokens, with (layered) a cohort of `prefill_tokens` in prompts of
    about `prompt_len` tokens, or (chunked) one chunk of a `prompt_len`-token prompt."""
    engine, cfg = llm.engine, llm.model_config
    L = cfg.num_layers
    decoding = [placed(engine, random_prompt(rng, cfg, context), context - 1, Status.DECODING, 2 * reps + 8)
                for _ in range(decodes)]
    if schedule == "layered":
        n = max(1, prefill_tokens // prompt_len)
        works, offset = [], 0
        for size in [prefill_tokens // n] * (n - 1) + [prefill_tokens - (n - 1) * (prefill_tokens // n)]:
            req = placed(engine, random_prompt(rng, cfg, size), 0, Status.PREFILLING, 1)
            engine.blocks.allocate(req.request_id, size)
            works.append(PrefillWork(req, 0, size, offset))
            offset += size
        groups = even_split(L, engine.config.num_groups_for(prefill_tokens, L))
        layers = groups[len(groups) // 2]
        extra = dict(cohort_prompts=n, groups=len(groups), group_layers=list(layers))
    else:
        start = max(0, min(prompt_len // 2, prompt_len - chunk))
        req = placed(engine, random_prompt(rng, cfg, prompt_len), start, Status.PREFILLING, 1)
        engine.blocks.allocate(req.request_id, start + chunk)
        works, layers = [PrefillWork(req, start, start + chunk, 0)], (0, L)
        extra = dict(chunk=[start, start + chunk])
    plan = IterationPlan(L, decodes=decoding, prefills=works, prefill_layers=layers)
    timing = time_plan(engine.executor, plan, reps)
    drain(llm)
    return summarise(f"{schedule} mixed", cfg, plan, timing, item, ceil, "pipelined_ms", decodes=decodes,
                     context=context, prefill_tokens=plan.prefill_tokens, **extra)


def drain(llm) -> None:
    """Abort every request and read back what is in flight: the pool is empty again."""
    for rid in list(llm.engine.requests):
        llm.abort(rid)
    while llm.has_unfinished():
        llm.step()
    assert llm.engine.blocks.all_free()


def serving_run(llm, n: int, context: int, rng) -> dict:
    cfg = llm.model_config
    prompts = [random_prompt(rng, cfg, int(k)) for k in rng.integers(min(64, context), context + 1, n)]
    out_tokens = rng.integers(8, 65, n)
    before = compile_counter.count()
    t = time.perf_counter()
    ids = [llm.add_request(p, max_tokens=int(m), ignore_eos=True) for p, m in zip(prompts, out_tokens)]
    done = 0
    while llm.has_unfinished():
        done += len(llm.step())
    wall = time.perf_counter() - t
    row = dict(case=f"{n}-request run (layered)", requests=n, finished=done, wall_s=wall,
               compiles=compile_counter.count() - before, prompt_tokens=sum(map(len, prompts)),
               output_tokens=int(out_tokens.sum()))
    assert done == len(ids)
    log(f"  {row['case']}: {wall:.1f} s wall, {row['compiles']} compilations, {row['prompt_tokens']} prompt + "
        f"{row['output_tokens']} output tokens")
    return row


# --- the step's HLO: are layers of the stacked weights copied? --------------------------------

def layer_slices(hlo: str) -> dict:
    """Dynamic slices of size 1 on the leading (layer) axis in optimized HLO text, grouped by
    the kind of the fusion that holds them ("kLoop" fusions write the slice to memory: a copy;
    a gemm fusion or XLA's dynamic-slice fusion reads it in place). Returns {kind: [count,
    bytes per execution]}."""
    item = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u8": 1, "f8e4m3fn": 1}
    owner, kinds, found = None, {}, []
    for line in hlo.splitlines():
        if m := re.match(r"^%?([\w.-]+) .*\{$", line):
            owner = m.group(1)
        if " dynamic-slice(" in line and "dynamic_slice_sizes={1," in line:
            dtype, dims = re.search(r"= (\w+)\[([\d,]*)\]", line).groups()
            found.append((owner, dtype, dims))
        if m := re.search(r"fusion\(.*kind=(\w+), calls=%?([\w.-]+)", line):
            config = re.search(r'"kind":"(\w+)"', line)
            kinds[m.group(2)] = config.group(1) if config else m.group(1)
    out: dict[str, list] = {}
    for owner, dtype, dims in found:
        n = int(np.prod([int(d) for d in dims.split(",") if d])) * item.get(dtype, 4)
        kind = kinds.get(owner, "unfused")
        out.setdefault(kind, [0, 0])
        out[kind][0] += 1
        out[kind][1] += n
    return out


def dump_hlo(llm, out_dir: pathlib.Path, bucket: int) -> dict:
    ex = llm.engine.executor
    hlo = ex._step_exe[ex.model.num_layers, bucket].as_text()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"step_{llm.model_config.name}_{bucket}.hlo.txt").write_text(hlo)
    found = layer_slices(hlo)
    log(f"layer slices in the {bucket}-row whole-model step (fusion kind: count, bytes per layer): {found}")
    return found


# --- results ----------------------------------------------------------------------------------

def write(out_dir: pathlib.Path, device: str, entry: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"engine_{device_slug(device)}.json"
    data = json.loads(path.read_text()) if path.exists() else {"device": device, "models": {}}
    data["models"][entry["model"]] = entry
    path.write_text(json.dumps(data, indent=1))
    path.with_suffix(".md").write_text(markdown(data))


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(data: dict) -> str:
    lines = [f"# Engine iterations vs floors on {data['device']}", "",
             "Written by `scripts/bench_engine.py` (see its docstring for what each column measures). ms per "
             "iteration; wall = engine steps (decode) or the pipelined executor loop (others), mean; device = "
             "the prepared iteration launched back to back, mean; serial = rows built, launched and read back, "
             "median; floor = max(bytes / copy bandwidth, FLOPs / matmul rate) per call; host overhead = wall - "
             "device (what the host adds to the device's own pace); kernels = CUPTI kernel time per iteration "
             "(a separate loop), gaps = device - kernels (the device idle between its ~60 kernels per layer); CUPTI "
             "misses some kernels run inside CUDA graphs (the whole-model steps), so there kernels is a lower "
             "bound and gaps an upper bound; ceilings: best of 20 calls.", ""]
    for entry in data["models"].values():
        c = entry["ceilings"]
        lines += [f"## {entry['model']} ({entry['dtype']}, {entry['date']}, jax {entry['jax']})", "",
                  f"Copy bandwidth {c['copy_Bps'] / 1e12:.3f} TB/s (read + write), bf16 matmul "
                  f"{c['matmul_flops'] / 1e12:.1f} TFLOP/s, measured in this run. Start-up: weights "
                  f"{entry['weights_s']:.1f} s, {entry['executables']} executables compiled in "
                  f"{entry['compile_s']:.1f} s (row buckets {entry['row_buckets']}); KV pool {entry['num_pages']} "
                  f"pages of {entry['page_size']} tokens.", "",
                  "| case | rows (buckets) | wall ms | device ms | serial ms | floor ms | wall / floor | "
                  "device / floor | kernels ms | gaps ms | expert GB | host overhead ms (%) |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in entry["cases"]:
            if "error" in r:
                lines.append(f"| {r['case']} | error: {r['error'][:120]} | | | | | | | | | | |")
            if "buckets" not in r:
                continue
            calls = f" in {r['step_calls']} calls" if r.get("step_calls", 0) > len(r["buckets"]) else ""
            lines.append(f"| {r['case']} | {r['buckets']}{calls} | {r[r['wall'] + '_ms']:.2f} ({r['wall']}) | "
                         f"{r['device_ms']:.2f} | {r['serial_ms']:.2f} | {r['floor_ms']:.2f} | {r['ratio']:.2f} | "
                         f"{r['device_ratio']:.2f} | {_ms(r['kernel_busy_ms'])} | {_ms(r['launch_gaps_ms'])} | "
                         f"{r['expert_GB']:.2f} | {r['host_overhead_ms']:.2f} "
                         f"({r['host_overhead_pct']:.1f}%) |")
        for r in entry["cases"]:
            if "host_prepare_ms" in r:
                lines.append(f"\n{r['case']}, host time of a pipelined step (medians): building rows "
                             f"{r['host_prepare_ms']:.2f} ms, in the launch calls {r['host_launch_ms']:.2f} ms, "
                             f"waiting for the previous iteration's tokens {r['host_wait_ms']:.2f} ms.")
            if r.get("floor_rate_pct"):
                lines.append(f"\n{r['case']}: {r['floor_rate_pct']:.0f}% of the floor rate.")
            if "compiles" in r:
                lines.append(f"\n{r['case']}: {r['wall_s']:.1f} s wall, {r['compiles']} compilations, "
                             f"{r['prompt_tokens']} prompt and {r['output_tokens']} output tokens.")
        lines += [""] + [f"- {n}" for n in entry["notes"]] + [""]
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------

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
    log(f"ceilings: copy {ceil['copy_Bps'] / 1e12:.3f} TB/s, matmul {ceil['matmul_flops'] / 1e12:.2f} TFLOP/s")

    C, P, chunk, D = sizes["context"], sizes["prefill"], sizes["chunk"], sizes["mixed_decodes"]
    cohort = max(1, P // C)  # the layered mixed case's prompts, of about C tokens each
    seqs = max(max(sizes["batches"]), D + cohort)
    buckets = tuple(sorted({*sizes["batches"], D, chunk + D, P + seqs}))
    options = dict(dtype=dtype, max_num_seqs=seqs, max_num_batched_tokens=P, token_budget=chunk + D,
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


if __name__ == "__main__":
    sys.exit(main())
