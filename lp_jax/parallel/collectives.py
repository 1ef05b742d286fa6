"""What an all-reduce costs on this machine's devices, measured: the simulator's collective term.

A ring all-reduce of b bytes over n devices moves 2 (n - 1) / n x b bytes through each device's
links (NCCL's "bus bandwidth" convention), so its time is modelled as

    latency_s + 2 (n - 1) / n x b / bus_Bps

and both constants are fitted (least squares) to timed all-reduces of a ladder of sizes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lp_jax.model.config import ModelConfig

# The sizes an engine all-reduces: one row's hidden state (a few KiB) to a large prefill's
# (8192 rows x 2880 x 2 bytes = 45 MiB).
DEFAULT_SIZES = tuple(1 << k for k in range(12, 27, 2))  # 4 KiB .. 64 MiB


@dataclass(frozen=True)
class AllReduceCost:
    """latency_s: seconds of an empty all-reduce; bus_Bps: bytes/s of bus bandwidth; devices: n;
    samples: (bytes per device, median seconds) the fit was made from."""

    devices: int
    latency_s: float
    bus_Bps: float
    samples: tuple[tuple[int, float], ...] = ()

    def seconds(self, nbytes: float, group: int | None = None) -> float:
        """Seconds of one all-reduce of `nbytes` bytes (each device's buffer) over `group` of the
        devices (default all; a subgroup is taken to see the same links, latency and bandwidth)."""
        n = self.devices if group is None else group
        if n == 1:
            return 0.0
        return self.latency_s + 2 * (n - 1) / n * nbytes / self.bus_Bps

    def to_json(self) -> dict:
        return asdict(self)


def fit_all_reduce(devices: int, samples) -> AllReduceCost:
    """Least-squares latency and bus bandwidth from (bytes, seconds) samples; ValueError when the
    samples cannot give a positive bandwidth (fewer than two sizes, or times not growing with size)."""
    samples = tuple((int(b), float(s)) for b, s in samples)
    if len({b for b, _ in samples}) < 2:
        raise ValueError("fitting an all-reduce needs samples of at least two sizes")
    x = np.asarray([2 * (devices - 1) / devices * b for b, _ in samples])
    y = np.asarray([s for _, s in samples])
    slope, intercept = np.polyfit(x, y, 1)
    if slope <= 0:
        raise ValueError(f"all-reduce times do not grow with size (slope {slope:.3g} s/byte): too noisy to fit")
    return AllReduceCost(devices, max(float(intercept), 0.0), float(1 / slope), samples)


def time_all_reduce(devices=None, sizes=DEFAULT_SIZES, reps: int = 10, dtype=jnp.bfloat16) -> AllReduceCost:
    """Time a psum of each size (bytes per device) over `devices` (default: all JAX sees) and fit
    the cost; the median of `reps` calls per size, after one warm-up call."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if n < 2:
        raise ValueError("timing an all-reduce needs at least 2 devices; JAX sees 1")
    mesh = Mesh(np.asarray(devices), ("all",))
    sharding = NamedSharding(mesh, PartitionSpec("all"))
    reduce = jax.jit(jax.shard_map(lambda x: jax.lax.psum(x, "all"), mesh=mesh, in_specs=PartitionSpec("all"),
                                   out_specs=PartitionSpec("all")))
    item = jnp.dtype(dtype).itemsize
    samples = []
    for nbytes in sizes:
        x = jax.device_put(jnp.ones((n, max(1, nbytes // item)), dtype), sharding)
        reduce(x).block_until_ready()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            reduce(x).block_until_ready()
            times.append(time.perf_counter() - t)
        samples.append((x.shape[1] * item, statistics.median(times)))
    return fit_all_reduce(n, samples)


def layer_all_reduce_s(cost: AllReduceCost, model: ModelConfig, tp: int, ep: int, rows: int, dtype_bytes: int) -> float:
    """Seconds of the all-reduces one layer of a tp x ep engine runs on `rows` padded rows: after
    the head-split output projection over the tp devices of a tensor group, and after the MoE over
    all tp x ep devices (a dense MLP: over the tp devices); each carries rows x D values."""
    nbytes = rows * model.hidden_size * dtype_bytes
    ffn_group = tp * ep if model.is_moe else tp
    return cost.seconds(nbytes, tp) + cost.seconds(nbytes, ffn_group)
