"""Cluster studies in the simulator: replicas (simulated engines, each on its own virtual clock)
behind a request router.

Replicas share nothing but the router, so the cluster advances exactly: before request i is routed
at its arrival time t, every replica is stepped until its clock reaches t (an idle one waits until
t), then the router reads their state at t and the request joins one replica with arrival_s = t.
After the last arrival every replica runs dry. Routers:

- "round_robin": request i goes to replica i mod R;
- "least_loaded": to the replica with the fewest unfinished requests (waiting, running or with a
  token in flight) at its arrival, the lowest index among equals.

Results are one BenchResult over all requests (record ids are workload indices) whose summary
adds the router, the replica count and each replica's requests and SLO attainment.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
from tqdm import tqdm

from lp_jax.bench.runner import BenchResult, record_output, submit
from lp_jax.bench.metrics import RequestRecord, serving_metrics, slo_attainment
from lp_jax.bench.workload import Workload

ROUTERS = ("round_robin", "least_loaded")


def route(router: str, replicas: list, i: int) -> int:
    """The replica request i goes to."""
    if router == "round_robin":
        return i % len(replicas)
    if router == "least_loaded":
        loads = [len(r.engine.requests) for r in replicas]
        return int(np.argmin(loads))
    raise ValueError(f"unknown router {router!r}; choose one of {', '.join(ROUTERS)}")


def _advance(llm, until_s: float, pending: dict, bar) -> None:
    """Step a replica until its clock reads >= until_s (an idle one waits until then); until_s =
    inf runs it dry."""
    clock = llm.engine.clock
    while llm.has_unfinished() and clock() < until_s:
        for out in llm.step():
            record_output(pending.pop(out.request_id), out)
            bar.update(1)
    if until_s != float("inf"):
        clock.wait_until(until_s)


def run_cluster(replicas: list, workload: Workload, *, router: str = "least_loaded", ttft_bound_s: float,
                tbt_bound_s: float, label: str | None = None, progress: bool = True) -> BenchResult:
    """Serve `workload` on simulated replicas (lp_jax.LLM objects with a sim executor, all starting at
    clock 0) behind `router`; see the module docstring."""
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; choose one of {', '.join(ROUTERS)}")
    if not replicas or any(r.simulation is None for r in replicas):
        raise ValueError("a cluster needs at least one replica, each with a simulated executor (executor='sim...')")
    prompts = workload.placeholder_prompts()
    pending: list[dict[int, RequestRecord]] = [{} for _ in replicas]
    records: list[RequestRecord] = []
    served_by: list[int] = []
    bar = tqdm(total=len(workload), desc=label or "cluster", unit="req", disable=not progress, leave=False)
    for i, t in enumerate(workload.arrival_s.tolist()):
        for k, llm in enumerate(replicas):
            _advance(llm, t, pending[k], bar)
        k = route(router, replicas, i)
        rec = submit(replicas[k], i, prompts[i], int(workload.output_tokens[i]), t)
        if rec.status != "rejected":
            pending[k][rec.id] = rec
        else:
            bar.update(1)
        rec.id = i
        records.append(rec)
        served_by.append(k)
    for k, llm in enumerate(replicas):
        _advance(llm, float("inf"), pending[k], bar)
    bar.close()
    summary = serving_metrics(records, ttft_bound_s, tbt_bound_s)
    first = replicas[0]
    per_replica = []
    for k in range(len(replicas)):
        mine = [r for r, s in zip(records, served_by) if s == k]
        per_replica.append(dict(requests=len(mine), slo_attainment=slo_attainment(mine, ttft_bound_s, tbt_bound_s)
                                if mine else None))
    summary.update(label=label or f"{len(replicas)} x {first.engine_config.schedule}, {router}",
                   executor=first.executor_label, model=first.model_config.name, schedule=first.engine_config.schedule,
                   router=router, replicas=len(replicas), per_replica=per_replica, workload=workload.info,
                   host_cpus=os.cpu_count(),
                   date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return BenchResult(records, summary)
