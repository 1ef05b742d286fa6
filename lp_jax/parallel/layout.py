"""The device mesh of a TP x EP engine and where every array lives on it.

Mesh axes: `expert` (size ep, outer) x `tensor` (size tp, inner: the neighbours with the fastest
links carry the all-reduces that follow every attention and MoE block). Weights are placed from
the logical axes their declarations name (`lp_jax.model.spec`), through one rules table:

    heads, kv_heads -> tensor      attention split by heads; the KV pools with their KV heads
    experts         -> expert      each device holds E / ep whole experts (expert parallelism)
    mlp             -> tensor      each expert's (or the dense MLP's) hidden dim split, as the paper
    anything else   -> replicated  (embedding, norms, LM head)

except the router (and its bias), replicated although it has an experts axis: every device
routes every token, as the paper, so the top-k needs no gather across devices.

With tp = ep = 1 there is no mesh and nothing changes. Collectives are left to XLA: the sharded
weights make its SPMD partitioner insert the all-reduce after the head-sharded output projection
and after the expert-sharded MoE (see `lp_jax.parallel.kernels` for the per-shard kernels).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lp_jax.model.config import ModelConfig
from lp_jax.model.spec import ParamSpec, layer_spec, model_spec

TENSOR, EXPERT = "tensor", "expert"
RULES = {"heads": TENSOR, "kv_heads": TENSOR, "experts": EXPERT, "mlp": TENSOR}
REPLICATED_WEIGHTS = ("router", "router_bias")


def _check_sizes(tp, ep) -> None:
    for name, value in (("tp", tp), ("ep", ep)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_parallel(model: ModelConfig, tp: int, ep: int) -> None:
    """ValueError naming the field and what it must divide, for a tp x ep this model cannot take
    (the devices are `check_devices`' question: a simulated engine has none)."""
    _check_sizes(tp, ep)
    for what, size in (("query heads", model.num_heads), ("KV heads", model.num_kv_heads),
                       ("expert hidden size" if model.is_moe else "MLP hidden size", model.ffn_size)):
        if size % tp:
            raise ValueError(f"tp={tp} does not divide {model.name}'s {size} {what}; tp must be one of "
                             f"{_divisors(math.gcd(model.num_heads, model.num_kv_heads, model.ffn_size))}")
    if ep > 1 and not model.is_moe:
        raise ValueError(f"ep={ep}: {model.name} is dense (no experts to spread); ep must be 1")
    if model.is_moe and model.num_experts % ep:
        raise ValueError(f"ep={ep} does not divide {model.name}'s {model.num_experts} experts; ep must be one of "
                         f"{_divisors(model.num_experts)}")


def check_devices(tp: int, ep: int, num_devices: int | None = None) -> None:
    """ValueError unless tp x ep is 1 or the device count (default: every device of every process)."""
    _check_sizes(tp, ep)
    num_devices = jax.device_count() if num_devices is None else num_devices
    if tp * ep > 1 and tp * ep != num_devices:
        raise ValueError(f"tp x ep = {tp} x {ep} = {tp * ep} devices, but JAX sees {num_devices} "
                         f"({jax.devices()[0].platform}, over {jax.process_count()} process(es)); tp x ep must "
                         "equal the device count (choose the devices with CUDA_VISIBLE_DEVICES)")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class Layout:
    """Where a TP x EP engine's arrays live. Hashable (a static argument of the step functions);
    `mesh` is None for a single device."""

    tp: int = 1
    ep: int = 1
    mesh: Mesh | None = None

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    def spec(self, axes: tuple[str, ...]) -> PartitionSpec:
        """The PartitionSpec of an array with these logical axes (None for an unnamed one); an
        axis whose mesh axis has size 1 stays unsplit."""
        sizes = {TENSOR: self.tp, EXPERT: self.ep}
        return PartitionSpec(*(RULES.get(a) if sizes.get(RULES.get(a), 1) > 1 else None for a in axes))

    def sharding(self, axes: tuple[str | None, ...]) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(axes))

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())


def make_layout(model: ModelConfig, tp: int = 1, ep: int = 1) -> Layout:
    """The layout of tp x ep over every device JAX sees (all processes'), checked first."""
    check_parallel(model, tp, ep)
    check_devices(tp, ep)
    if tp * ep == 1:
        return Layout()
    devices = np.asarray(jax.devices()).reshape(ep, tp)
    return Layout(tp, ep, Mesh(devices, (EXPERT, TENSOR)))


# KV pools [L, P, Z, N, A]: split with their KV heads.
POOL_AXES = (None, None, None, "kv_heads", None)


def layer_axes(model: ModelConfig) -> dict[str, tuple]:
    """The logical axes a layer's weights are placed by: as declared, the router's unnamed."""
    return {name: (None,) * len(s.axes) if name in REPLICATED_WEIGHTS else s.axes
            for name, s in layer_spec(model).items()}


def stacked_layer_axes(model: ModelConfig) -> dict[str, tuple]:
    """Logical axes of the engine's layer stacks ([L, ...] per weight: the layer axis unsplit)."""
    return {name: (None, *axes) for name, axes in layer_axes(model).items()}


def head_axes(model: ModelConfig) -> dict[str, tuple]:
    """Logical axes of the weights outside the layers (embedding, final norm, LM head)."""
    return {name: s.axes for name, s in model_spec(model).items() if isinstance(s, ParamSpec)}


def place(array, sharding: NamedSharding):
    """`array` (on one device or the host, the same on every process) laid out as `sharding`.
    Within one process a device-to-device copy; across processes each takes its own shards."""
    if sharding.is_fully_addressable:
        return jax.device_put(array, sharding)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def shard_bytes(model: ModelConfig, tp: int, ep: int, dtype_bytes: int) -> int:
    """Weight bytes one device holds under tp x ep (replicated weights counted in full)."""
    layout = Layout(tp, ep)
    split = {TENSOR: tp, EXPERT: ep}

    def per_device(s: ParamSpec, axes: tuple) -> int:
        parts = math.prod(split[m] for m in layout.spec(axes) if m is not None)
        return math.prod(s.shape) // parts

    axes = layer_axes(model)
    layers = sum(per_device(s, axes[name]) for name, s in layer_spec(model).items()) * model.num_layers
    return dtype_bytes * (layers + sum(per_device(s, s.axes) for s in model_spec(model).values()
                                       if isinstance(s, ParamSpec)))
