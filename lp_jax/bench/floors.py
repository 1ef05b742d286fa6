"""Hardware floors of engine iterations: what no implementation can beat on this device.

Floor of a call = max(bytes / copy bandwidth, FLOPs / matmul rate); bytes = distinct experts
actually routed to (counted by the step) x expert bytes + the other weights of its layers + K/V
read and written; FLOPs = 2 x rows x active parameters of its layers + attention (4 x visible
keys x H x A per row and layer). The LM head and sampling count once per iteration. `ceil` is
what `lp_jax.bench.ceilings.ceilings` measured."""

from __future__ import annotations

import numpy as np

from lp_jax.engine.scheduler import IterationPlan
from lp_jax.model.config import ModelConfig


def call_floor(cfg: ModelConfig, layers: tuple[int, int], keys_per_row: list[np.ndarray], expert_counts_L,
               item: int, ceil: dict) -> dict:
    """Floor of one layer-range call. keys_per_row: per sequence, the keys each of its rows sees
    (position + 1), and its rows are the K/V written; expert_counts_L: distinct experts per layer."""
    lo, hi = layers
    rows = sum(len(k) for k in keys_per_row)
    dense = cfg.attention_params_per_layer() + (cfg.router_params() if cfg.is_moe else cfg.ffn_params_per_layer())
    active = dense + (cfg.num_experts_per_tok * cfg.expert_params() if cfg.is_moe else 0)
    kv_token = 2 * cfg.num_kv_heads * cfg.head_dim * item  # K and V of one token in one layer
    bytes_, flops = 0.0, 0.0
    for layer in range(lo, hi):
        window = cfg.layer_window(layer)
        seen = [np.minimum(k, window) if window else k for k in keys_per_row]
        # Every key a sequence's rows see is read once (the largest row's context), each row's K/V written once.
        bytes_ += dense * item + kv_token * (sum(int(s.max()) for s in seen) + rows)
        flops += 2 * rows * active + 4 * cfg.num_heads * cfg.head_dim * sum(int(s.sum()) for s in seen)
    experts = float(np.asarray(expert_counts_L)[lo:hi].sum()) * cfg.expert_params() * item
    bytes_ += experts
    return dict(bytes=bytes_, expert_bytes=experts, flops=flops,
                floor_s=max(bytes_ / ceil["copy_Bps"], flops / ceil["matmul_flops"]))


def head_floor(cfg: ModelConfig, sampled: int, item: int, ceil: dict) -> float:
    w = cfg.vocab_size * cfg.hidden_size
    return max(w * item / ceil["copy_Bps"], 2 * sampled * w / ceil["matmul_flops"])


def plan_floor(cfg: ModelConfig, plan: IterationPlan, counts: list, item: int, ceil: dict) -> dict:
    """Floor of an iteration: its calls' floors + the LM head for the sampled rows."""
    calls, sampled = [], len(plan.decodes)
    for seg, expert_counts_L in zip(plan.segments(), counts):
        keys = [np.asarray([r.num_computed + 1]) for r in plan.decodes] if seg.decode else []
        if seg.prefill:
            keys += [np.arange(w.start + 1, w.end + 1) for w in plan.prefills]
        calls.append(call_floor(cfg, (seg.layer_lo, seg.layer_hi), keys, expert_counts_L, item, ceil))
    if plan.prefill_finishes_layers:
        sampled += sum(w.completes_prompt for w in plan.prefills)
    floor = sum(c["floor_s"] for c in calls) + head_floor(cfg, sampled, item, ceil)
    return dict(floor_ms=floor * 1e3, expert_GB=sum(c["expert_bytes"] for c in calls) / 1e9,
                bytes_GB=sum(c["bytes"] for c in calls) / 1e9, TFLOP=sum(c["flops"] for c in calls) / 1e12)
