"""GPU interpret mode gets enough XLA CPU threads (pallas_kernels/interpret.py): the pool this test
process runs with, and the refusal when the CPU backend started with too few."""

import os
from pathlib import Path

import jax
import pytest

from pallas_kernels import interpret
from pallas_kernels.interpret import INTERPRET_CPU_THREADS, gpu_interpret_mode, reserve_interpret_threads


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from Linux /proc")
def test_xla_cpu_pool_has_the_threads_interpret_mode_needs():
    """conftest reserved the threads before JAX started: XLA's intra-op pool (the threads that run
    interpret-mode callbacks) really has them, whatever the core count."""
    jax.devices()
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except FileNotFoundError:  # a thread that ended between the listing and the read
            pass
    assert names.count("tf_XLAEigen") >= INTERPRET_CPU_THREADS


def test_too_few_threads_after_the_backend_started_is_refused(monkeypatch):
    jax.devices()
    monkeypatch.setenv("NPROC", "2")
    with pytest.raises(RuntimeError, match=f"needs {INTERPRET_CPU_THREADS} XLA CPU threads.*with 2"):
        reserve_interpret_threads()
    with pytest.raises(RuntimeError, match="NPROC"):
        with gpu_interpret_mode():
            pass


def test_reservation_before_the_backend_starts_raises_a_small_size_and_keeps_a_large_one(monkeypatch):
    monkeypatch.setattr(interpret.xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv("NPROC", "3")
    reserve_interpret_threads()
    assert os.environ["NPROC"] == str(INTERPRET_CPU_THREADS)
    monkeypatch.setenv("NPROC", "64")
    reserve_interpret_threads()
    assert os.environ["NPROC"] == "64"
    monkeypatch.delenv("NPROC")
    monkeypatch.setattr(interpret.os, "sched_getaffinity", lambda pid: set(range(16)))
    reserve_interpret_threads()
    assert "NPROC" not in os.environ
