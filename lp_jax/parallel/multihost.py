"""Multi-host start: one process per host (or per GPU), joined through `jax.distributed`.

Every process runs the same command with the same options and seed; after the start JAX sees
the devices of all processes (`jax.devices()`), the mesh spans them, and XLA's collectives
(NCCL on GPUs, gloo on CPUs) carry the all-reduces. The host work (scheduling, row batches) runs
in every process identically, so each feeds the same inputs to the same SPMD program; where a
decision reads the clock (the bench's arrivals), process 0's reading is shared (`agreed_elapsed`).
"""

from __future__ import annotations

import jax
import numpy as np


def check_distributed(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """Whether a multi-process start was asked for; ValueError naming the flag for a partial or
    impossible one (all three are needed, the address is HOST:PORT, 0 <= process_id < count)."""
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"a multi-process start needs --coordinator-address, --num-processes and --process-id "
                         f"together; missing: {', '.join('--' + m.replace('_', '-') for m in missing)}")
    host, sep, port = coordinator_address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--coordinator-address must be HOST:PORT (e.g. 10.0.0.1:1234, the address of process 0), "
                         f"got {coordinator_address!r}")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"--num-processes must be an integer >= 1, got {num_processes!r}")
    if isinstance(process_id, bool) or not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be an integer in [0, {num_processes - 1}], got {process_id!r}")
    return True


def start_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                      process_id: int | None = None, timeout_s: int = 300) -> bool:
    """Join the processes through `jax.distributed.initialize` (process 0 serves the coordinator
    at `coordinator_address`); must run before anything touches a JAX device. Returns False,
    doing nothing, when no flag is given (one process)."""
    if not check_distributed(coordinator_address, num_processes, process_id):
        return False
    jax.distributed.initialize(coordinator_address, num_processes, process_id, initialization_timeout=timeout_s)
    return True


def agreed_elapsed(elapsed_s: float) -> float:
    """Process 0's value of a duration (seconds since a start each process took itself), on every
    process; the value itself in a single-process run. A real-time loop that admits requests by
    the clock decides with it, so that every process admits the same requests at the same
    iteration and feeds the SPMD program the same batches (each process's clock alone would
    drift apart). A collective: every process must call it equally often. Durations travel
    rather than clock readings, which start anywhere, and in float32 (JAX's default) a duration
    keeps microseconds for hours."""
    if jax.process_count() == 1:
        return elapsed_s
    from jax.experimental import multihost_utils
    return float(multihost_utils.broadcast_one_to_all(np.float32(elapsed_s)))
