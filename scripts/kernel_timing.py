"""Device-synchronised timing of one call, shared by the kernel benches and sweeps (the ceilings
time themselves in `lp_jax.bench.ceilings`, the same way: distinct sets, the fastest run).

A timed program runs the call once on each of several distinct input sets back to back (so
host dispatch overlaps device work and no set is served from L2 by the previous one); its wall
time / number of sets is one sample. The benches report the median of `reps` samples (`stat=min`
gives the fastest, as a floor wants).
"""

from __future__ import annotations

import statistics
import time
import traceback

import jax


def jax_time_ms(fn, sets, reps, stat=statistics.median):
    """ms per fn(*set) call: one jitted program over all sets, `stat` over reps runs."""
    many = jax.jit(lambda ss: [fn(*s) for s in ss])
    jax.block_until_ready(many(sets))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(many(sets))
        ts.append(time.perf_counter() - t0)
    return stat(ts) * 1e3 / len(sets)


def torch_time_ms(fn, sets, reps, stat=statistics.median):
    """Same for torch: the calls over all sets captured in one CUDA graph (eager if capture
    fails, said on stdout), replayed reps times."""
    import torch
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles Triton kernels) outside the capture
        for s in sets:
            fn(*s)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for s in sets:
                fn(*s)
        run = graph.replay
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        print("  torch: CUDA graph capture failed, timing eager calls", flush=True)

        def run():
            for s in sets:
                fn(*s)
    run()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return stat(ts) * 1e3 / len(sets)
