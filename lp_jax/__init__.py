"""lp-jax: layered-prefill serving engine and research bench for MoE models, in JAX."""
