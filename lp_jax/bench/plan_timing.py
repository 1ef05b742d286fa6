"""One IterationPlan timed on the executor three ways (device, serial, pipelined: see
`lp_jax.bench.engine_bench`), with CUPTI kernel time where there is a GPU, and its result row
against its floor."""

from __future__ import annotations

import statistics
import time

from lp_jax.bench.engine_report import log
from lp_jax.bench.floors import plan_floor
from lp_jax.bench.kernel_times import KernelTimes
from lp_jax.engine.scheduler import IterationPlan


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
    counts = timing.pop("counts")
    floor = plan_floor(cfg, plan, counts, item, ceil)
    # The same floor at the datasheet's peaks: no measured ceiling below them makes it lenient.
    peaks = dict(copy_Bps=ceil.get("datasheet_copy_Bps"), matmul_flops=ceil.get("datasheet_matmul_flops"))
    datasheet_ms = plan_floor(cfg, plan, counts, item, peaks)["floor_ms"] if all(peaks.values()) else None
    wall, kind = timing[wall_key], wall_key.removesuffix("_ms")
    busy = timing.pop(kind + "_busy_ms")
    device = timing["device_ms"]
    row = dict(case=name, **extra, **timing, **floor, wall=kind, ratio=wall / floor["floor_ms"],
               device_ratio=device / floor["floor_ms"], datasheet_floor_ms=datasheet_ms,
               datasheet_ratio=None if datasheet_ms is None else wall / datasheet_ms, host_overhead_ms=wall - device,
               host_overhead_pct=100 * (wall - device) / wall, kernel_busy_ms=busy,
               launch_gaps_ms=None if busy is None else device - busy)
    gaps = "" if busy is None else f", kernels {busy:.2f} ms + gaps {device - busy:.2f} ms"
    if "host_prepare_ms" in timing:
        gaps += (f"; pipelined step's host: rows {timing['host_prepare_ms']:.2f} ms, in launch calls "
                 f"{timing['host_launch_ms']:.2f} ms, waiting for tokens {timing['host_wait_ms']:.2f} ms (medians)")
    log(f"  {name}: wall {wall:.2f} ms ({kind}), device {device:.2f} ms{gaps}, serial "
        f"{timing['serial_ms']:.2f} ms, floor {floor['floor_ms']:.2f} ms, ratio {row['ratio']:.2f} ("
        + ("datasheet unknown" if datasheet_ms is None else f"{row['datasheet_ratio']:.2f} of the datasheet floor")
        + f"), host overhead "
        f"{row['host_overhead_ms']:.2f} ms ({row['host_overhead_pct']:.1f}%)")
    return row
