"""Replicas behind a router in the simulator: one replica is the plain bench run, round robin
deals requests in turn, least-loaded sends a request to the emptiest replica."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import lp_jax
from lp_jax.bench.runner import run_bench
from lp_jax.bench.cluster import route, run_cluster
from lp_jax.bench.compare import DEMO
from lp_jax.bench.workload import make_workload

SLO = dict(ttft_bound_s=0.5, tbt_bound_s=0.1)


def replicas(n, schedule="chunked"):
    return [lp_jax.LLM("tiny-qwen3-moe", schedule, executor="sim:cpu", token_budget=64, **DEMO.engine_options)
            for _ in range(n)]


def workload(rate, n=40):
    return make_workload("sharegpt", n, rate=rate, seed=3, length_scale=1 / 16, context_limit=512)


def test_one_replica_is_the_bench_run():
    wl = workload(8.0)
    alone = run_bench(replicas(1)[0], wl, **SLO, progress=False)
    cluster = run_cluster(replicas(1), wl, router="round_robin", **SLO, progress=False)
    assert [r.token_times_s for r in cluster.records] == [r.token_times_s for r in alone.records]
    assert cluster.summary["ttft_s"] == alone.summary["ttft_s"]


def test_round_robin_deals_in_turn_and_more_replicas_cut_latency():
    wl = workload(40.0)
    one = run_cluster(replicas(1), wl, router="round_robin", **SLO, progress=False).summary
    four = run_cluster(replicas(4), wl, router="round_robin", **SLO, progress=False).summary
    assert [r["requests"] for r in four["per_replica"]] == [10, 10, 10, 10]
    assert four["num_finished"] == 40 and four["replicas"] == 4
    assert four["ttft_s"]["mean"] < one["ttft_s"]["mean"]
    assert four["executor"].startswith("simulated, cost table cpu/tiny-qwen3-moe")


def test_least_loaded_picks_the_emptiest_replica():
    fake = [SimpleNamespace(engine=SimpleNamespace(requests=dict.fromkeys(range(n)))) for n in (3, 1, 1, 2)]
    assert route("least_loaded", fake, 0) == 1
    assert route("round_robin", fake, 6) == 2
    with pytest.raises(ValueError, match="unknown router"):
        route("random", fake, 0)
