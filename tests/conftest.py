"""Skip tests marked `gpu` unless JAX sees an NVIDIA Hopper GPU."""

import pytest


def pytest_collection_modifyitems(config, items):
    import jax

    dev = jax.devices()[0]
    if dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9"):
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA Hopper GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
