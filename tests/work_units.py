"""How the suite splits over pytest-xdist workers (scripts/test.sh runs 2 with --dist loadfile):
each work unit runs whole on one worker, so its module-level engines and caches serve all of its
tests, and the units are handed out longest first.

A unit is a test file, except SHARED_ENGINE_FILES, which build their engines from each other's
settings (equal shapes) or reuse each other's served engines: one unit, so that each of their
executables compiles and each engine serves once, not once per file (the compile cache and the
functools caches are per process)."""

from __future__ import annotations

import pytest
from xdist.scheduler import LoadScopeScheduling

SHARED_ENGINE_FILES = ("test_engine_api.py", "test_engine_schedules.py", "test_layered_beyond.py", "test_sim_engine.py")
# By test time in a CI run of 2026-12-02, longest first (an outdated order costs only balance:
# a long unit handed out last keeps one worker busy while the other idles). The rest follow in
# collection order.
LONGEST_FIRST = ("engines", "test_paged_attention.py", "test_moe_kernels.py", "test_parallel_engine.py",
                 "test_reliability.py", "test_long_prompts.py", "test_expert_traffic.py", "test_engine_routing.py",
                 "test_bench_engine.py", "test_tiny_moe.py", "test_moe_decode.py", "test_engine_pallas_interpret.py",
                 "test_compile_cache.py", "test_moe_blocked.py", "test_gguf.py")


def work_unit(nodeid: str) -> str:
    """The unit of a test id ("tests/test_x.py::test_y[...]"): its file's name, or "engines"."""
    name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return "engines" if name in SHARED_ENGINE_FILES else name


class WorkUnitScheduling(LoadScopeScheduling):
    """xdist's per-scope scheduling with work_unit as the scope; with --no-loadscope-reorder the
    units go out in collection order, which pytest_collection_modifyitems makes longest first."""

    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)


class _Scheduler:
    """The xdist hook, registered only where xdist runs (its hook is unknown under -p no:xdist)."""

    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        return WorkUnitScheduling(config, log) if config.getvalue("dist") == "loadfile" else None


def pytest_configure(config):
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_Scheduler(), "lp-jax work units")


def pytest_collection_modifyitems(config, items):
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(work_unit(item.nodeid), len(rank)))  # stable: files keep their order
