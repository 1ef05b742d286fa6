"""Where the CPU simulator's per-iteration time goes, term by term, against a real run's.

Calibrates a table (as scripts/sim_fidelity.py does), serves one held-out ShareGPT workload for
real with every engine step timed (its host work, its wait for the device, its read-back), replays
the same plans in the simulator with its terms recorded (the cost model's device time, the host
model's dispatch and read-back), and prints, per iteration kind (decode-only, whole-model with a
prefill, layered range step), the medians of each term and the contention the real run implies:

    c = (real period - simulated device time) / (real host time + real read-back)

(the simulator's period of a device-bound iteration is device + contention x (host + read-back)),
and the replay's median period error at the table's measured contention and at others
(--also-contentions: 1, what CPU tables assumed before it was measured, and 0).

    .venv/bin/python scripts/cpu_iteration_terms.py --config chunked:token_budget=64 --rate 6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np

from lp_jax.bench.calibrate import Calibrator, calibrate_with
from lp_jax.bench.compare import DEMO, parse_config
from lp_jax.bench.fidelity import (KINDS, _ArrivalLog, _engine_config, _shape, drive, iteration_kind,
                                   simulated_llm, steady)
from lp_jax.bench.runner import make_llm, run_bench
from lp_jax.bench.workload import make_workload


def timed_real(llm):
    """Wraps the engine's step and its executor's dispatch / fetch; returns {iteration: terms}."""
    eng, ex = llm.engine, llm.engine.executor
    terms: dict[int, dict] = {}
    cur = {}
    dispatch, fetch, step = ex.dispatch, ex.fetch, eng.step

    def t_dispatch(plan):
        t = time.perf_counter()
        out = dispatch(plan)
        cur["dispatch"] = time.perf_counter() - t
        return out

    def t_fetch(flight):
        t = time.perf_counter()
        jax.block_until_ready((flight.tokens_B, [c for _, _, c, _ in flight.segments]))
        t1 = time.perf_counter()
        out = fetch(flight)
        cur["wait"], cur["readback"] = t1 - t, time.perf_counter() - t1
        return out

    def t_step():
        cur.clear()
        before = eng.state.iteration
        t = time.perf_counter()
        out = step()
        wall = time.perf_counter() - t
        if eng.state.iteration != before:
            terms[before] = dict(wall=wall, dispatch=cur.get("dispatch", 0.0), wait=cur.get("wait", 0.0),
                                 readback=cur.get("readback", 0.0),
                                 host=wall - cur.get("wait", 0.0) - cur.get("readback", 0.0))
        return out

    ex.dispatch, ex.fetch, eng.step = t_dispatch, t_fetch, t_step
    return terms


def replay_terms(table_path, config, arrivals, model):
    """The simulated replay (as lp_jax.bench.fidelity.replay) with each iteration's device time."""
    sim = simulated_llm(table_path, config, model)
    ex = sim.engine.executor
    device: dict[int, float] = {}
    dispatch = ex.dispatch

    def t_dispatch(plan):
        flight = dispatch(plan)
        device[sim.engine.state.iteration] = flight.device_s
        return flight

    ex.dispatch = t_dispatch
    drive(sim, arrivals)
    return sim.engine.records, device, sim.simulation.table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-qwen3-moe")
    p.add_argument("--config", default="chunked:token_budget=64")
    p.add_argument("--rate", type=float, default=6.0)
    p.add_argument("--num-requests", type=int, default=48)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--table", help="a cost table to use instead of calibrating")
    p.add_argument("--out", default="/tmp/cpu_iteration_terms")
    p.add_argument("--also-contentions", default="1,0",
                   help="replay the same run on the table with each of these contentions too (comma-separated)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    cfgs = ["layered:group_tokens=64", args.config] if not args.config.startswith("layered") else [args.config]
    llm = make_llm(args.model, [_engine_config(c) for c in cfgs], args.config, False, print, trace=True)
    if args.table:
        path = args.table
    else:
        llm.use(_engine_config(cfgs[0]))
        t = time.perf_counter()
        table = calibrate_with(Calibrator(llm), progress=False)
        path = table.save(os.path.join(args.out, "table.json"))
        print(f"calibrated in {time.perf_counter() - t:.0f} s, host {table.host}, contention fit "
              f"{table.fit.get('contention')}, host run simulated / real "
              f"{table.fit['host_run']['simulated_s'] / table.fit['host_run']['real_s']:.2f}")
    config = parse_config(args.config, DEMO.engine_options)
    llm.use(_engine_config(args.config))
    L = llm.model_config.num_layers
    workload = make_workload("sharegpt", args.num_requests, rate=args.rate, seed=args.seed, length_scale=1 / 16,
                             context_limit=llm.engine_config.model_len(llm.model_config))
    first = len(llm.engine.records)
    terms = timed_real(llm)
    log = _ArrivalLog(llm)
    load = os.getloadavg()[0]
    try:
        run_bench(llm, workload, ttft_bound_s=0.5, tbt_bound_s=0.1, warmup=4, progress=False)
    finally:
        log.close()
    real = llm.engine.records[first:]
    start = real[0].iteration
    shifted = [(it - start, n, m) for it, n, m in log.log]
    sim, device, table = replay_terms(path, config, shifted, args.model)
    same = [_shape(r) for r in real] == [_shape(r) for r in sim]
    print(f"{args.config} at {args.rate:g} req/s, load average {load:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"same plans: {same}")
    if not same:
        return 1
    h = table.host
    others = {}  # contention -> simulated period of each iteration on the table with it
    for c in [float(x) for x in args.also_contentions.split(",") if x]:
        variant = table.with_params(host=dataclasses.replace(h, contention=c))
        other, _, _ = replay_terms(variant.save(os.path.join(args.out, f"table_contention_{c:g}.json")), config,
                                   shifted, args.model)
        others[c] = {b.iteration: b.end_s - a.end_s for a, b in zip(other, other[1:])}
    keep = steady(real, {it for it, _, _ in log.log})
    rows = []
    for k, (prev_r, rec, prev_s, srec) in enumerate(zip(real, real[1:], sim, sim[1:])):
        if not keep[k]:
            continue
        nxt = terms.get(rec.iteration + 1)  # the step that read this iteration back
        mine = terms.get(rec.iteration)
        if nxt is None or mine is None:
            continue
        sim_host = (h.step_s + h.decode_s * len(rec.decode_ids) + h.prefill_s * len(rec.prefill))
        rows.append(dict(kind=iteration_kind(rec, L), decodes=len(rec.decode_ids), real_period=rec.end_s - prev_r.end_s,
                         sim_period=srec.end_s - prev_s.end_s, sim_device=device[srec.iteration - start],
                         sim_host=sim_host, sim_readback=h.readback_s, real_host=nxt["host"],
                         real_dispatch=mine["dispatch"], real_wait=nxt["wait"], real_readback=nxt["readback"],
                         **{f"sim_period_c{c:g}": o[srec.iteration] for c, o in others.items()}))
    with open(os.path.join(args.out, f"terms_{args.config.replace(':', '_')}_{args.rate:g}.json"), "w") as f:
        json.dump(dict(config=args.config, rate=args.rate, load=load, host=vars(h), rows=rows), f)
    cols = ("real_period", "sim_period", "sim_device", "real_host", "sim_host", "real_wait", "real_readback",
            "sim_readback", "real_dispatch")
    print("medians in ms; c = (real period - sim device) / (real host + real read-back)")
    print(f"period error: simulated / real - 1 at the measured contention {h.contention:.2f}"
          + "".join(f", then at {c:g}" for c in others))
    print("| kind | n | decodes | " + " | ".join(cols) + " | period error | " + " | ".join(
        f"error at {c:g}" for c in others) + " | c |")
    for kd in KINDS:
        sel = [r for r in rows if r["kind"] == kd]
        if not sel:
            continue
        med = {c: 1e3 * float(np.median([r[c] for r in sel])) for c in cols}
        err = float(np.median([r["sim_period"] / r["real_period"] - 1 for r in sel]))
        c = float(np.median([(r["real_period"] - r["sim_device"]) / (r["real_host"] + r["real_readback"])
                             for r in sel]))
        alt = [100 * float(np.median([r[f"sim_period_c{o:g}"] / r["real_period"] - 1 for r in sel])) for o in others]
        print(f"| {kd} | {len(sel)} | {np.median([r['decodes'] for r in sel]):.0f} | "
              + " | ".join(f"{med[c_]:.2f}" for c_ in cols) + f" | {100 * err:+.0f} % | "
              + " | ".join(f"{a:+.0f} %" for a in alt) + f" | {c:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
