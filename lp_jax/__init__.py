"""lp-jax: layered-prefill serving engine and research bench for MoE models, in JAX."""

from lp_jax.engine.request import RequestOutput, SamplingParams
from lp_jax.llm import LLM

__all__ = ["LLM", "RequestOutput", "SamplingParams"]
