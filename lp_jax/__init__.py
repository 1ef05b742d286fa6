"""lp-jax: layered-prefill serving engine and research bench for MoE models, in JAX."""

from lp_jax.llm import LLM
from lp_jax.request import RequestOutput, SamplingParams

__all__ = ["LLM", "RequestOutput", "SamplingParams"]
