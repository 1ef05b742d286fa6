"""Each measured iteration of a traced run timed with a cost table: the simulator's error per
iteration, as a distribution, with no schedule divergence (every plan is the measured one).

A traced run (iterations.jsonl, lp_jax.bench.iteration_log) gives every iteration's plan shape and
when it was dispatched and read back. Measured time of iteration i (after the first): while the
engine is busy (i dispatched before i - 1 was read back) the time from i - 1's tokens to i's, else
i's own dispatch-to-read-back time (lp_jax.bench.fidelity.iteration_times). Simulated: the
pipelined engine's period for that plan, the longer of its device time (the cost model's calls and
sampling call, `SimulatedExecutor.predict_s`) and its host time (`SimulatedExecutor.host_s`), plus
the table's contention x the shorter (a CPU's host and "device" share cores); an idle iteration
(the engine waited for work) takes both in turn. Iterations are split by kind:
decode-only, or with prefill rows.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from lp_jax.bench.fidelity import PERCENTILES, iteration_times
from lp_jax.engine.scheduler.base import IterationPlan, PrefillWork

KINDS = ("all", "decode-only", "with prefill")


def plan_of(row: dict, num_layers: int) -> IterationPlan:
    """The IterationPlan of one iterations.jsonl row, on stand-in requests (ids, positions, prompt
    ends: all the simulator reads of a plan)."""
    decodes = [SimpleNamespace(request_id=-1 - i, num_computed=c - 1, prefill_target=0)
               for i, c in enumerate(row["decode_contexts"])]
    prefills, offset = [], 0
    for rid, start, end, completes, layers in row["prefill"]:
        req = SimpleNamespace(request_id=rid, num_computed=start, prefill_target=end if completes else end + 1)
        prefills.append(PrefillWork(req, start, end, offset, tuple(layers)))
        offset += end - start
    return IterationPlan(num_layers, decodes=decodes, prefills=prefills, prefill_layers=tuple(row["prefill_layers"]))


def replay(rows: list[dict], executor) -> dict:
    """{measured, simulated: seconds per iteration after the first; busy: bool; prefill: bool
    (the iteration has prefill rows)} of a traced run's rows on a SimulatedExecutor."""
    records = [SimpleNamespace(start_s=r["start_s"], end_s=r["end_s"]) for r in rows]
    measured = iteration_times(records)
    L, contention = executor.model.num_layers, executor.table.host.contention
    simulated, busy = [], []
    for prev, row in zip(rows, rows[1:]):
        plan = plan_of(row, L)
        device, host = executor.predict_s(plan), executor.host_s(plan)
        b = row["start_s"] < prev["end_s"]
        busy.append(b)
        # Where host and device share cores (contention c, 1 on a CPU) the overlap is lost.
        simulated.append(max(device, host) + contention * min(device, host) if b else device + host)
    return dict(measured=measured, simulated=np.asarray(simulated), busy=np.asarray(busy, bool),
                prefill=np.array([bool(r["prefill"]) for r in rows[1:]], bool))


def distribution(times: dict) -> dict:
    """{kind: {count, p1..p99 of simulated / measured - 1, measured and simulated p50 (s)}} over
    the iterations of each kind (KINDS)."""
    err = times["simulated"] / np.maximum(times["measured"], 1e-9) - 1.0
    masks = {"all": np.ones(err.size, bool), "decode-only": ~times["prefill"], "with prefill": times["prefill"]}
    out = {}
    for kind in KINDS:
        m = masks[kind]
        if not m.any():
            continue
        out[kind] = dict(count=int(m.sum()), busy=int((m & times["busy"]).sum()),
                         measured_p50_s=float(np.median(times["measured"][m])),
                         simulated_p50_s=float(np.median(times["simulated"][m])),
                         **{f"p{q}": float(np.percentile(err[m], q)) for q in PERCENTILES})
    return out


def markdown(results: list[tuple[str, dict]]) -> str:
    """A table of (label, distribution) pairs: one row per label and kind."""
    head = ("| run | iterations | count (busy) | p50 measured / simulated ms | "
            + " | ".join(f"p{q}" for q in PERCENTILES) + " |")
    lines = [head, "|---|---|---|---|" + "---|" * len(PERCENTILES)]
    for label, dist in results:
        for kind, d in dist.items():
            lines.append(f"| {label} | {kind} | {d['count']} ({d['busy']}) | {1e3 * d['measured_p50_s']:.1f} / "
                         f"{1e3 * d['simulated_p50_s']:.1f} | "
                         + " | ".join(f"{100 * d[f'p{q}']:+.0f} %" for q in PERCENTILES) + " |")
    return "\n".join(lines) + "\n"
