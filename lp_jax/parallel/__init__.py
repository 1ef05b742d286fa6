"""Several devices: the tensor x expert mesh, sharding rules from the weights' logical axes,
the per-shard kernels, and the multi-host start."""

from lp_jax.parallel.layout import EXPERT, RULES, TENSOR, Layout, check_devices, check_parallel, make_layout
from lp_jax.parallel.multihost import start_distributed

__all__ = ["EXPERT", "RULES", "TENSOR", "Layout", "check_devices", "check_parallel", "make_layout", "start_distributed"]
