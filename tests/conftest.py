"""Suite-wide set-up and checks:
- give XLA's CPU pools enough threads for GPU interpret mode before any test starts JAX's CPU
  backend (see pallas_kernels/interpret.py: too few threads and an interpret-mode kernel hangs);
- keep JAX's persistent compilation cache out of every test that does not ask for it (the
  `persistent_compilation_cache` fixture), and fail the test that leaves it on;
- skip tests marked `gpu` unless JAX sees an NVIDIA Hopper GPU;
- under pytest-xdist, a test past its timeout prints its stacks and is not run again
  (tests/worker_timeout.py), and the tests go out in work units, longest first (tests/work_units.py)."""

import jax
import pytest
from jax._src import compilation_cache  # jax 0.11.2 has no public "is a cache open?"

from pallas_kernels.interpret import reserve_interpret_threads

reserve_interpret_threads()

pytest_plugins = ["tests.worker_timeout", "tests.work_units"]

# The cache options a test may change, with the suite's values. jax 0.11.2 sends every compile
# through its cache code while jax_enable_compilation_cache is on (its default), directory or not:
# off, no compile reads, writes or even hashes a cache entry unless the test turned it on. A
# JAX_COMPILATION_CACHE_DIR in the caller's shell (the README's start-up advice) is dropped too, so
# the tests never load executables another run wrote.
SUITE_CACHE_CONFIG = {
    "jax_enable_compilation_cache": False,
    "jax_compilation_cache_dir": None,
    "jax_persistent_cache_min_compile_time_secs": jax.config.jax_persistent_cache_min_compile_time_secs,
    "jax_persistent_cache_min_entry_size_bytes": jax.config.jax_persistent_cache_min_entry_size_bytes,
}


def _set_cache_config(values: dict) -> None:
    for name, value in values.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # forget a cache opened under other options


_set_cache_config(SUITE_CACHE_CONFIG)


def _cache_state() -> dict:
    state = {name: getattr(jax.config, name) for name in SUITE_CACHE_CONFIG}
    return dict(state, open_cache=compilation_cache._cache)


@pytest.fixture
def persistent_compilation_cache():
    """For a test that turns JAX's persistent compilation cache on: the suite's cache options
    and a closed cache again afterwards, whatever the test did."""
    yield
    _set_cache_config(SUITE_CACHE_CONFIG)


@pytest.fixture(autouse=True)
def _persistent_cache_stays_off(request):
    """Fails (as an error at teardown) a test that leaves the persistent cache on, and turns it
    off again so that the tests after it are not run through it."""
    yield
    state = _cache_state()
    if state != dict(SUITE_CACHE_CONFIG, open_cache=None):
        _set_cache_config(SUITE_CACHE_CONFIG)
        pytest.fail(f"{request.node.nodeid} left JAX's persistent compilation cache on: {state} "
                    "(use the persistent_compilation_cache fixture)", pytrace=False)


def pytest_collection_modifyitems(config, items):
    dev = jax.devices()[0]
    if dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9"):
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA Hopper GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
