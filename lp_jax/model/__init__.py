"""Pure-function models over pytrees: Qwen3-MoE, GPT-OSS and dense Qwen3."""

from lp_jax.model.forward import batch_forward, decoder_layer, reference_forward, reference_logits
from lp_jax.model.init import init_params
from lp_jax.model.spec import layer_spec, model_spec

__all__ = ["batch_forward", "decoder_layer", "reference_forward", "reference_logits", "init_params", "layer_spec",
           "model_spec"]
