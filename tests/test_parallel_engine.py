"""Tensor and expert parallelism end to end on the CPU: the engine split over 2 and 4 forced host
devices gives the single-device greedy outputs under all three schedules, and a two-process run
joined through jax.distributed on loopback gives them too.

Each configuration runs in a fresh process (tests/parallel_worker.py): XLA's forced host device
count must be set before JAX starts, and a process joins at most one distributed group. All the
processes start together at the first test that needs one (2 cores: compiles overlap), and each
must finish within TIMEOUT_S, so a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 900
SCHEDULES = ["prefill_first", "chunked", "layered"]
# Devices -> the split configurations run there (model, schedule, tp, ep); the worker adds each
# model and schedule on one device. 2: heads and each expert's hidden dim split (MoE) and the
# dense MLP split; 4: both axes at once on GPT-OSS (biases, sinks, sliding windows).
CASES = {
    2: [("tiny-qwen3-moe", s, 2, 1) for s in SCHEDULES] + [("tiny-qwen3", "layered", 2, 1)],
    4: [("tiny-gpt-oss", s, 2, 2) for s in SCHEDULES],
}
# The two-process run: one CPU device each, the experts spread over both processes.
MULTI_PROCESS_CASE = ("tiny-qwen3-moe", "layered", 1, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(cases, devices: int, *distributed: str) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                      f" --xla_force_host_platform_device_count={devices}").strip(),
               JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "tests.parallel_worker", json.dumps(cases), *distributed],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@functools.cache
def _jobs() -> dict:
    address = f"127.0.0.1:{_free_port()}"
    jobs = {n: _spawn(cases, n) for n, cases in CASES.items()}
    for i in range(2):
        jobs[f"process-{i}"] = _spawn([MULTI_PROCESS_CASE], 1, address, "2", str(i))
    return jobs


@functools.cache
def result(name) -> dict:
    """The worker's JSON line; the test fails with its stderr's tail if it failed or timed out."""
    job = _jobs()[name]
    try:
        out, err = job.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        job.kill()
        out, err = job.communicate()
        pytest.fail(f"worker {name} took over {TIMEOUT_S} s:\n{err[-3000:]}")
    if job.returncode != 0:
        pytest.fail(f"worker {name} exited with {job.returncode}:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _key(model, schedule, tp, ep) -> str:
    return f"{model}/{schedule}/{tp}/{ep}"


@pytest.mark.parametrize("devices,case", [(n, c) for n, cases in CASES.items() for c in cases],
                         ids=lambda v: "-".join(map(str, v)) if isinstance(v, tuple) else f"{v}dev")
def test_split_engine_gives_the_single_device_outputs(devices, case):
    got = result(devices)
    assert got["devices"] == devices
    model, schedule, tp, ep = case
    single = got["outputs"][_key(model, schedule, 1, 1)]
    assert all(len(tokens) == 5 for tokens in single)
    assert got["outputs"][_key(*case)] == single


@pytest.mark.parametrize("devices,case", [(2, CASES[2][0]), (2, CASES[2][-1]), (4, CASES[4][0])],
                         ids=["moe-tp2", "dense-tp2", "moe-tp2-ep2"])
def test_weights_and_kv_pools_are_split_not_replicated(devices, case):
    """One device holds its share: KV heads and query heads / tp, experts / ep, expert hidden / tp;
    the embedding whole."""
    from lp_jax.model.config import get_preset

    cfg = get_preset(case[0])
    tp, ep = case[2], case[3]
    shards = result(devices)["shards"]
    local, whole = shards[_key(*case)], shards[_key(case[0], case[1], 1, 1)]
    L, P, Z, N, A = whole["k_pool"]
    assert local["k_pool"] == [L, P, Z, N // tp, A]
    assert local["wq"] == [L, cfg.hidden_size, cfg.num_heads // tp, cfg.head_dim]
    if cfg.is_moe:
        assert local["w_gate"] == [L, cfg.num_experts // ep, cfg.hidden_size, cfg.ffn_size // tp]
    else:
        assert local["w_gate"] == [L, cfg.hidden_size, cfg.ffn_size // tp]
    assert local["embed"] == whole["embed"] == [cfg.vocab_size, cfg.hidden_size]


def test_two_processes_on_loopback_give_the_single_device_outputs():
    """jax.distributed over 127.0.0.1, one CPU device per process, experts split between them:
    both processes see 2 devices and produce the single-device tokens."""
    single = result(2)["outputs"][_key(*MULTI_PROCESS_CASE[:2], 1, 1)]
    for i in range(2):
        got = result(f"process-{i}")
        assert (got["devices"], got["process"]) == (2, i)
        assert got["agreed_elapsed"] == 0.25  # process 0's clock reading, which the bench admits by
        assert got["outputs"][_key(*MULTI_PROCESS_CASE)] == single
        assert got["shards"][_key(*MULTI_PROCESS_CASE)]["w_gate"][1] == 8 // 2  # 4 of tiny's 8 experts here


@pytest.mark.parametrize("devices", sorted(CASES))
def test_all_reduce_cost_is_measured_over_the_devices(devices):
    cost = result(devices)["all_reduce"]
    assert cost["devices"] == devices and cost["bus_Bps"] > 0 and cost["latency_s"] >= 0
    assert [b for b, _ in cost["samples"]] == [1 << 12, 1 << 20, 1 << 22]
