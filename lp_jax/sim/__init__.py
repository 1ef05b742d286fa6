"""The simulator: the engine, its schedulers and metrics unchanged, the forward pass replaced by a
calibrated cost model (cost_model, work, expert_load) on a virtual clock (clock), behind the
executor seam (executor). `lp_jax.LLM(..., executor="sim[:DEVICE]")` builds one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lp_jax.model.config import ModelConfig
from lp_jax.engine.config import EngineConfig
from lp_jax.engine.memory import plan_num_pages
from lp_jax.sim.clock import VirtualClock
from lp_jax.sim.cost_model import CostTable, device_slug, load_table
from lp_jax.sim.executor import SimulatedExecutor
from lp_jax.sim.expert_load import expert_load
from lp_jax.sim.pipeline import PipelineExecutor, PipelineSpec


def parse_executor(spec: str) -> str:
    """The table part of an executor spec "sim[:DEVICE or PATH][:KEY=VALUE...]" ("" for a bare
    "sim"; the options are PipelineSpec.parse's); ValueError for anything else."""
    return _split_executor(spec)[0]


def pipeline_of(spec: str) -> PipelineSpec | None:
    """The pipeline an executor spec's options ask for (pp=S, link=..., mb=...), None without options."""
    options = _split_executor(spec)[1]
    return PipelineSpec.parse(options) if options else None


def _split_executor(spec: str) -> tuple[str, list[str]]:
    kind, _, rest = spec.partition(":")
    if kind != "sim" or (spec.endswith(":") and not rest):
        raise ValueError(f"unknown executor {spec!r}: use 'model' (the real forward pass), 'sim' (the simulator "
                         "with the model's preferred cost table), 'sim:DEVICE' or 'sim:PATH.json', then any of "
                         ":pp=STAGES:link=nvlink|pcie|GBPS:mb=true|false (pipeline parallelism)")
    items = rest.split(":") if rest else []
    options = [i for i in items if "=" in i]
    table = ":".join(i for i in items if "=" not in i)
    PipelineSpec.parse(options)  # refuses a bad option here, before anything is built
    return table, options


@dataclass
class Simulation:
    """What a simulated engine runs on: a cost table, a virtual clock, the KV pool the table's
    device memory allows. The routing profile is the engine's (EngineConfig.routing)."""

    table: CostTable
    clock: VirtualClock
    dtype: np.dtype
    num_pages: int
    pipeline: PipelineSpec | None = None

    @staticmethod
    def of(spec, model: ModelConfig, config: EngineConfig) -> "Simulation":
        """spec: "sim[:DEVICE or PATH][:pp=...]" or a CostTable."""
        pipeline = None
        if isinstance(spec, CostTable):
            if spec.model != model.name:
                raise ValueError(f"cost table {spec.name} is for {spec.model}, not {model.name}")
            table = spec
        else:
            table, pipeline = load_table(parse_executor(spec), model.name), pipeline_of(spec)
        if config.dtype and config.dtype != table.dtype:
            raise ValueError(f"dtype {config.dtype} differs from the cost table's {table.dtype} ({table.name})")
        dtype = _dtype(table.dtype)
        num_pages = plan_num_pages(model, config, dtype, available=table.memory_bytes)
        return Simulation(table, VirtualClock(), dtype, num_pages, pipeline)

    @property
    def label(self) -> str:
        return self.table.label + (f", {self.pipeline.label}" if self.pipeline else "")

    def executor_factory(self):
        def make(model, config, blocks, dtype, record_rows):
            load = expert_load(model.num_experts, model.num_experts_per_tok, config.routing) if model.is_moe else None
            if self.pipeline is not None:
                return PipelineExecutor(model, config, blocks, self.table, self.clock, load, record_rows,
                                        pipeline=self.pipeline)
            return SimulatedExecutor(model, config, blocks, self.table, self.clock, load, record_rows)
        return make


def cost_predictor(model: ModelConfig, config: EngineConfig, spec: str = ""):
    """`predict_s(plan) -> seconds` from a committed cost table of the model (`spec`: as
    load_table's, "" = the preferred device), for a real engine's adaptive layered schedule;
    None when the model has no table that can serve this configuration."""
    load = expert_load(model.num_experts, model.num_experts_per_tok, config.routing) if model.is_moe else None
    try:  # no table of the model, or (tp x ep > 1) none with the all-reduce measured
        return SimulatedExecutor(model, config, None, load_table(spec, model.name), VirtualClock(), load).predict_s
    except ValueError:
        return None


def device_predictor(model: ModelConfig, config: EngineConfig, device_kind: str, platform: str):
    """What a real engine on a JAX device of this kind and platform sizes adaptive groups by: the
    committed table of the model for that device ("NVIDIA H200" -> h200), else the model's
    preferred one; None without either. Reads only files of this package."""
    return cost_predictor(model, config, device_slug(device_kind, platform)) or cost_predictor(model, config)


def _dtype(name: str) -> np.dtype:
    """numpy dtype of a table's dtype name (bfloat16 through ml_dtypes, which jax ships)."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

    return np.dtype(getattr(ml_dtypes, name) if name == "bfloat16" else name)


__all__ = ["Simulation", "cost_predictor", "device_predictor", "SimulatedExecutor", "PipelineExecutor", "PipelineSpec",
           "VirtualClock", "CostTable", "load_table", "parse_executor", "pipeline_of"]
