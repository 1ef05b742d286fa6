"""`LLM`: the public entry point (offline `generate` and the incremental request API)."""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp

from lp_jax.engine.config import EngineConfig, check_removed_options, shared_executor_config
from lp_jax.engine.engine import Engine, model_executor
from lp_jax.engine.memory import plan_num_pages
from lp_jax.engine.request import RequestOutput, SamplingParams
from lp_jax.model.config import ModelConfig, get_preset
from lp_jax.model.init import init_params
from lp_jax.model.routing import UNIFORM, get_profile
from lp_jax.parallel.layout import check_devices
from lp_jax.sim import Simulation, device_predictor


def is_checkpoint(model) -> bool:
    """Whether `model` is a checkpoint (a directory, a GGUF file or packaged name, an opened
    GGUFCheckpoint), not a preset or a ModelConfig."""
    from lp_jax.checkpoint.gguf import GGUFCheckpoint, is_gguf

    if isinstance(model, GGUFCheckpoint) or is_gguf(model):
        return True
    return not isinstance(model, ModelConfig) and os.path.isdir(model)


def resolve_config(model: str | ModelConfig | os.PathLike) -> ModelConfig:
    """The ModelConfig of a preset name, a ModelConfig, a transformers checkpoint directory, or a
    GGUF checkpoint (an opened GGUFCheckpoint, a .gguf path or a packaged checkpoint's name)."""
    if isinstance(model, ModelConfig):
        return model
    from lp_jax.checkpoint.gguf import GGUFCheckpoint, is_gguf
    if isinstance(model, GGUFCheckpoint):
        return model.config
    if is_gguf(model):
        return GGUFCheckpoint(model).config
    if os.path.isdir(model):
        from lp_jax.checkpoint import read_hf_config
        return read_hf_config(model)
    return get_preset(str(model))


def load_weights(model, config: ModelConfig, seed: int, dtype) -> dict:
    """Weights of a checkpoint (directory or GGUF), or seeded random weights generated on the device."""
    from lp_jax.checkpoint.gguf import GGUFCheckpoint, is_gguf
    if isinstance(model, GGUFCheckpoint) or is_gguf(model):
        from lp_jax.checkpoint.gguf import load_gguf
        return load_gguf(model, dtype=dtype, stacked=True)[1]
    if is_checkpoint(model):
        from lp_jax.checkpoint import load_hf
        return load_hf(model, dtype=dtype, stacked=True)[1]
    return init_params(config, seed, dtype, stacked=True)


def default_dtype() -> str:
    return "bfloat16" if jax.devices()[0].platform == "gpu" else "float32"


class LLM:
    """lp_jax.LLM(model, schedule="layered", **engine_options).

    model: a preset name (see `lp-jax info`), a ModelConfig, a transformers checkpoint
    directory, or a GGUF checkpoint (path, packaged name such as "smollm2-135m-instruct", or an
    opened lp_jax.checkpoint.gguf.GGUFCheckpoint, so the file is parsed once). Engine options are the fields of `EngineConfig` (page_size, num_pages,
    max_num_seqs, max_prefill_tokens, max_cohort_tokens, token_budget, group_tokens, group_rule, num_groups,
    max_model_len, seed, dtype, row_buckets, routing, kv_memory_fraction, compiler_options, tp, ep). Extra
    keywords: params (weights to use), backend ("pallas" / "reference"), trace (keep
    per-iteration records), progress (callback(done, total), told before the first and after
    each start-up compilation), executor: "model" (the real forward pass, default) or the
    simulator, "sim[:DEVICE]" (a committed cost table of this model, the preferred device when
    none is named), "sim:PATH.json" or a CostTable (see lp_jax.sim): the same engine on a
    virtual clock, no weights, tokens that are never stop tokens.

    Single-threaded: one caller drives an LLM (and its Engine); nothing in them is locked. A
    server runs the engine loop on a thread of its own and hands requests to it.

    `generate` and the incremental API mix: requests queued with `add_request` before a
    `generate` call keep running during it, and those that finish meanwhile are returned by the
    next `step()` (nothing is dropped, and `generate` returns exactly its own prompts' outputs).
    """

    def __init__(self, model, schedule: str = "layered", *, params: dict | None = None, backend: str | None = None,
                 trace: bool = False, progress=None, executor="model", **engine_options):
        check_removed_options(engine_options)
        unknown = set(engine_options) - set(EngineConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown engine options: {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(EngineConfig.__dataclass_fields__))}")
        self.engine_config = EngineConfig(schedule=schedule, **engine_options)
        if is_checkpoint(model) and not get_profile(self.engine_config.routing).uses_router:
            raise ValueError(f"routing={self.engine_config.routing!r} is for random-weight presets: a checkpoint "
                             f"routes with its trained router (routing={UNIFORM!r})")
        self.model_config = resolve_config(model)
        self.engine_config.check_model(self.model_config)
        self.engine_config = self.engine_config.for_model(self.model_config)
        # Requests of the incremental API that finished inside `generate`, for the next `step`.
        self._finished_earlier: list[RequestOutput] = []
        if not (isinstance(executor, str) and executor == "model"):
            if params is not None or backend is not None:
                raise ValueError("the simulator takes no weights or kernel backend (params, backend)")
            self.simulation = Simulation.of(executor, self.model_config, self.engine_config)
            self.engine = Engine(self.model_config, self.engine_config, self.simulation.executor_factory(),
                                 self.simulation.dtype, clock=self.simulation.clock, trace=trace, progress=progress,
                                 num_pages=self.simulation.num_pages)
            return
        self.simulation = None
        dtype = jnp.dtype(self.engine_config.dtype or default_dtype())
        check_devices(self.engine_config.tp, self.engine_config.ep)  # the real executor's, before any weight
        # Decided (or refused) before anything is allocated, and not again once weights take memory.
        num_pages = plan_num_pages(self.model_config, self.engine_config, dtype)
        made = params is None
        if made:
            params = load_weights(model, self.model_config, self.engine_config.seed, dtype)
        # Weights made here are freed as they are split over several devices (tp x ep > 1).
        # The adaptive layered schedule sizes groups by a cost model: this device's committed table
        # of the model, else the model's preferred one (None without one: adaptive is then refused).
        device = jax.devices()[0]
        predict_s = device_predictor(self.model_config, self.engine_config, device.device_kind, device.platform)
        self.engine = Engine(self.model_config, self.engine_config, model_executor(params, backend, made), dtype,
                             trace=trace, progress=progress, num_pages=num_pages, predict_s=predict_s)

    @property
    def executor_label(self) -> str:
        """"real" or what simulated results are stamped with ("simulated, cost table ...")."""
        return self.simulation.label if self.simulation else "real"

    @classmethod
    def sharing(cls, model, configs: Sequence[EngineConfig], **kwargs) -> "LLM":
        """One LLM that can serve every configuration of `configs` in turn (`use`) on the same
        weights, KV pool and executables, set to the first. kwargs: as for LLM() (params, backend,
        trace, progress). ValueError when the configurations differ in an option that shapes the
        executor (see lp_jax.engine.config.shared_executor_config)."""
        shared = shared_executor_config(list(configs))
        fields = {k: getattr(shared, k) for k in EngineConfig.__dataclass_fields__ if k != "schedule"}
        llm = cls(model, shared.schedule, **kwargs, **fields)
        llm.use(configs[0])
        return llm

    def use(self, config: EngineConfig) -> None:
        """Serve with this configuration from now on (nothing may be in flight); see `sharing`."""
        self.engine.reconfigure(config)
        self.engine_config = config

    # --- incremental API --------------------------------------------------------------------
    def add_request(self, prompt: Sequence[int], max_tokens: int = 16, temperature: float = 0.0, top_p: float = 1.0,
                    top_k: int = 0, seed: int | None = None, stop_token_ids: Sequence[int] = (),
                    ignore_eos: bool = False, arrival_s: float | None = None) -> int:
        """Queue one request; returns its id. ValueError (naming the problem) for bad input."""
        params = SamplingParams(max_tokens, temperature, top_p, top_k, seed, tuple(stop_token_ids), ignore_eos)
        return self.engine.add_request(prompt, params, arrival_s)

    def step(self) -> list[RequestOutput]:
        """One iteration; returns the requests that finished in it (and first any queued with
        `add_request` that finished during a `generate` call since the last step)."""
        held, self._finished_earlier = self._finished_earlier, []
        return held + self.engine.step()

    def abort(self, request_id: int) -> bool:
        """Cancel a request; False if it had already ended, ValueError if the id is unknown."""
        return self.engine.abort(request_id)

    def has_unfinished(self) -> bool:
        """Whether `step` still has something to return: requests in the engine, or outputs
        held from a `generate` call."""
        return bool(self._finished_earlier) or self.engine.has_unfinished()

    # --- offline ----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: int = 16, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop_token_ids: Sequence[int] = (),
                 ignore_eos: bool = False) -> list[RequestOutput]:
        """Run all prompts to completion; outputs in prompt order. Every prompt is checked before
        any is queued, so a bad one raises ValueError and leaves the engine untouched. Requests
        queued earlier with `add_request` run alongside; those that finish meanwhile come back
        from the next `step()`."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
            raise ValueError("prompts must be a list of token-id lists")
        params = SamplingParams(max_tokens, temperature, top_p, top_k, seed, tuple(stop_token_ids), ignore_eos)
        for i, p in enumerate(prompts):
            try:
                self.engine.validate(p, params)
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
        ids = [self.engine.add_request(p, params) for p in prompts]
        wanted = set(ids)
        done: dict[int, RequestOutput] = {}
        while wanted - done.keys():
            for out in self.engine.step():
                if out.request_id in wanted:
                    done[out.request_id] = out
                else:
                    self._finished_earlier.append(out)
        return [done[i] for i in ids]
