"""lp-jax: layered-prefill serving engine and research bench for MoE models, in JAX.

The public API: `LLM` (the engine behind offline `generate` and the incremental request API),
`EngineConfig` (its options), `SamplingParams` and `RequestOutput`."""

from lp_jax.engine.config import EngineConfig
from lp_jax.engine.request import RequestOutput, SamplingParams
from lp_jax.llm import LLM

__all__ = ["LLM", "EngineConfig", "SamplingParams", "RequestOutput"]
