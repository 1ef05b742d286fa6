"""Give XLA's CPU pools enough threads for GPU interpret mode before any test starts JAX's CPU
backend (see pallas_kernels/interpret.py: too few threads and an interpret-mode kernel hangs), and
skip tests marked `gpu` unless JAX sees an NVIDIA Hopper GPU."""

import pytest

from pallas_kernels.interpret import reserve_interpret_threads

reserve_interpret_threads()


def pytest_collection_modifyitems(config, items):
    import jax

    dev = jax.devices()[0]
    if dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9"):
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA Hopper GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
