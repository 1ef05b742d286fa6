"""Device-memory planning: does a model fit (while it loads, and then with its workspace), and
how many KV pages fit beside it.

Checked before anything is allocated, so a model or pool that cannot fit fails at once with the
figures, instead of after minutes of weight generation with an allocator error.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from lp_jax.engine.config import EngineConfig
from lp_jax.engine.kv_cache import kv_bytes_per_page
from lp_jax.model.config import ModelConfig
from lp_jax.model.spec import layer_spec
from lp_jax.parallel.layout import shard_bytes

GIB = 2**30


def device_memory_bytes(device=None) -> int:
    """Memory JAX may use on the device (GPU: the allocator's limit; CPU: the host's available
    memory from /proc/meminfo, or 8 GiB where that is unreadable)."""
    device = device or jax.local_devices()[0]  # this process's (another host's cannot be asked)
    stats = device.memory_stats() if device.platform == "gpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GIB


def weight_bytes(model: ModelConfig, dtype) -> int:
    return model.total_params() * np.dtype(dtype).itemsize


def load_peak_bytes(model: ModelConfig, dtype) -> int:
    """Device bytes while the weights are made or loaded: every weight (the [L, ...] stacks are
    allocated first and filled in place, `init_params(stacked=True)` and
    `load_hf(stacked=True)`) plus one layer's largest weight in transit, counted twice in
    float32 (random init draws it in float32 before casting; a checkpoint puts it in `dtype`)."""
    largest = max(math.prod(s.shape) for s in layer_spec(model).values())
    return weight_bytes(model, dtype) + 2 * 4 * largest


def workspace_bytes(model: ModelConfig, config: EngineConfig, dtype) -> int:
    """A bound on what one layer-range call needs besides weights and pools: the hidden buffer,
    a layer's activations at the largest row bucket (the input and output rows, q/k/v/o, the K
    routed copies of each row through the experts' gate/up/down in f32), the logits of the
    sampled rows, plus 1 GiB for the runtime and compiled code. `config` as the engine runs it
    (`EngineConfig.for_model`: a layered lone prompt's rows count)."""
    config = config.for_model(model)
    item = np.dtype(dtype).itemsize
    D, H, N, A = model.hidden_size, model.num_heads, model.num_kv_heads, model.head_dim
    K = max(model.num_experts_per_tok, 1)
    per_row = item * (4 * D + 2 * (H + 2 * N) * A) + 4 * K * (3 * model.ffn_size + D)
    logits = 4 * config.max_num_seqs * model.vocab_size * 2
    return config.hidden_rows() * D * item + config.buckets()[-1] * per_row + logits + GIB


def plan_num_pages(model: ModelConfig, config: EngineConfig, dtype, available: int | None = None) -> int:
    """KV pages per layer pool (the reserved trash page included).

    With config.num_pages, check that they fit; without, take config.kv_memory_fraction of what
    the weights and workspace leave, capped at what max_num_seqs full-length sequences can use.
    Raises ValueError, with the figures, when the model or the pool does not fit.
    """
    config = config.for_model(model)
    available = device_memory_bytes() if available is None else available
    # Per device: its shards of the weights and of every page (the pools are split by KV heads).
    w = shard_bytes(model, config.tp, config.ep, np.dtype(dtype).itemsize)
    ws = workspace_bytes(model, config, dtype)
    per_page = kv_bytes_per_page(model, config.page_size, dtype) // config.tp
    min_pages = config.pages_per_seq(model) + 1
    left = available - w - ws
    per_device = f" per device (tp={config.tp}, ep={config.ep})" if config.tp * config.ep > 1 else ""
    if left < min_pages * per_page:
        raise ValueError(
            f"{model.name} does not fit: weights {w / GIB:.1f} GiB{per_device} + workspace {ws / GIB:.1f} GiB + one "
            f"{config.model_len(model)}-token sequence of KV ({min_pages * per_page / GIB:.2f} GiB) > "
            f"{available / GIB:.1f} GiB available; use a smaller dtype, max_model_len, max_prefill_tokens, "
            f"max_cohort_tokens or max_lone_prompt_tokens (now {config.lone_prompt_tokens}: a lone layered prompt's "
            "rows are part of the workspace)"
            + ("; JAX takes 75% of GPU memory unless XLA_PYTHON_CLIENT_MEM_FRACTION is set (e.g. 0.95)"
               if jax.devices()[0].platform == "gpu" else ""))
    load = load_peak_bytes(model, dtype)
    if load > available:  # the load's transient is gone before the workspace and the pool exist
        raise ValueError(f"{model.name} does not fit while its weights are made or loaded: {load / GIB:.1f} GiB "
                         f"(weights {weight_bytes(model, dtype) / GIB:.1f} GiB + one layer's weight in transit, made on "
                         f"the first device before they are split) > {available / GIB:.1f} GiB available; use a "
                         "smaller dtype")
    if config.num_pages is not None:
        if config.num_pages * per_page > left:
            raise ValueError(f"num_pages={config.num_pages} needs {config.num_pages * per_page / GIB:.1f} GiB of KV; "
                             f"only {left / GIB:.1f} GiB are left after weights and workspace ({ws / GIB:.1f} GiB; "
                             f"lower max_lone_prompt_tokens, now {config.lone_prompt_tokens}, to shrink it)")
        return config.num_pages
    useful = config.max_num_seqs * config.pages_per_seq(model) + 1
    return max(min_pages, min(useful, int(left * config.kv_memory_fraction) // per_page))
