"""First probe of a full-size decode iteration (issue 6 groundwork, not its benchmark).

Builds the engine's executor for a preset with random bf16 weights generated on the device,
gives B sequences a C-token history (the pages hold the pool's initial zeros: the timing of the
paged reads does not depend on their values), and times decode iterations of the whole model
(B rows through all layers, LM head, sampling, tokens back on the host). Prints the floor:
(distinct-expert bytes + attention and head weights + KV bytes read) / copy bandwidth.

    PYTHONPATH=. python3 scripts/probe_decode.py --model qwen3-30b-a3b --batch 64 --context 2048

With --tp / --ep the executor splits the model over tp x ep GPUs (all that JAX sees); the floor
stays the one-device floor, so its ratio to a --tp 1 run's shows what the split bought.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lp_jax.bench.kernel_times import KernelTimes
from lp_jax.engine.config import EngineConfig
from lp_jax.engine.executor import ModelExecutor
from lp_jax.engine.kv_cache import BlockManager, kv_bytes_per_page
from lp_jax.engine.memory import plan_num_pages
from lp_jax.engine.request import Request, SamplingParams, Status
from lp_jax.engine.scheduler import IterationPlan
from lp_jax.model import init_params
from lp_jax.model.config import get_preset


def copy_bandwidth() -> float:
    """Bytes per second read + written by a large device copy."""
    x = jax.random.normal(jax.random.key(0), (1 << 30,), jnp.bfloat16)
    f = jax.jit(lambda a: a * 1.5)
    f(x).block_until_ready()
    t = time.perf_counter()
    for _ in range(5):
        y = f(x)
    y.block_until_ready()
    rate = 5 * 2 * x.nbytes / (time.perf_counter() - t)
    del x, y
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3-30b-a3b")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tp", type=int, default=1, help="tensor parallelism (engine option tp)")
    ap.add_argument("--ep", type=int, default=1, help="expert parallelism (engine option ep)")
    ap.add_argument("--profile", action="store_true",
                    help="also time every kernel of 3 iterations (CUPTI) and print the busiest")
    args = ap.parse_args()

    cfg = get_preset(args.model)
    B, C = args.batch, args.context
    engine = EngineConfig(schedule="prefill_first", max_num_seqs=B, max_prefill_tokens=1, max_cohort_tokens=1,
                          max_model_len=C + 64, row_buckets=(B + 1,), tp=args.tp, ep=args.ep)
    engine.check_model(cfg)
    bw = copy_bandwidth()  # before the model takes the memory
    num_pages = plan_num_pages(cfg, engine, args.dtype)
    t = time.perf_counter()
    params = init_params(cfg, seed=0, dtype=args.dtype, stacked=True)
    jax.block_until_ready(params)
    print(f"weights generated on the device in {time.perf_counter() - t:.1f} s", flush=True)
    blocks = BlockManager(num_pages, engine.page_size)
    t = time.perf_counter()
    ex = ModelExecutor(cfg, engine, params, blocks, args.dtype)
    del params
    ex.precompile()
    print(f"executor built and compiled in {time.perf_counter() - t:.1f} s", flush=True)

    rng = np.random.default_rng(0)
    reqs = []
    for i in range(B):
        r = Request(i, [int(v) for v in rng.integers(0, cfg.vocab_size, C)], SamplingParams(max_tokens=64), 0.0, i,
                    status=Status.DECODING, num_computed=C - 1)
        blocks.allocate(i, C)
        reqs.append(r)
    plan = IterationPlan(cfg.num_layers, decodes=reqs)
    times, counts = [], []
    for i in range(args.iterations + 2):
        t = time.perf_counter()
        result = ex.execute(plan)
        dt = time.perf_counter() - t
        if i >= 2:
            times.append(dt)
            counts.append(int(sum(s.expert_counts_L.sum() for s in result.segments)))
    item = np.dtype(args.dtype).itemsize
    expert_bytes = statistics.mean(counts) * cfg.expert_params() * item
    other = (cfg.num_layers * (cfg.attention_params_per_layer() + (cfg.router_params() if cfg.is_moe else
                                                                    cfg.ffn_params_per_layer()))
             + cfg.vocab_size * cfg.hidden_size) * item
    kv = B * C * kv_bytes_per_page(cfg, 1, args.dtype)
    floor = (expert_bytes + other + kv) / bw
    med = statistics.median(times)
    out = dict(device=jax.devices()[0].device_kind, devices=jax.device_count(), tp=args.tp, ep=args.ep,
               model=cfg.name, batch=B, context=C,
               iteration_ms_median=med * 1e3, floor_ms=floor * 1e3, ratio=med / floor, copy_TBps=bw / 1e12,
               expert_GB=expert_bytes / 1e9, other_weights_GB=other / 1e9, kv_GB=kv / 1e9,
               distinct_experts_per_layer=statistics.mean(counts) / max(cfg.num_layers, 1))
    if args.profile:
        out.update(profile(ex, plan, 3))
    print(json.dumps(out, indent=1))


def profile(ex, plan, n: int) -> dict:
    """Device busy time per iteration (sum of kernel times) against wall time, and the kernels
    that take it, aggregated by name (ms per iteration)."""
    with KernelTimes() as kt:
        t = time.perf_counter()
        for _ in range(n):
            ex.execute(plan)
        wall = (time.perf_counter() - t) / n
    top = [dict(kernel=name[:90], launches_per_iteration=c / n, ms_per_iteration=ms / n)
           for name, c, ms in kt.by_name(top=15)]
    return dict(profiled_wall_ms=wall * 1e3, device_busy_ms=kt.busy_ms / n,
                kernels_per_iteration=len(kt.kernels) / n, top_kernels=top)


if __name__ == "__main__":
    main()
