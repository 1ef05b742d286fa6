"""The gated activation between the two matmuls of a torch/Triton MoE peer, as one Triton kernel
(vLLM runs a CUDA op here; three eager torch ops would cost the peer two extra launches).

Same math as pallas_kernels/activations.py, f32 inside: swiglu = silu(gate) * up; clamped_swiglu
(GPT-OSS) = min(gate, limit) * sigmoid(alpha * min(gate, limit)) * (clip(up, -limit, limit) + 1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _gated_activation_kernel(x_ptr, out_ptr, F, stride_x, stride_out, alpha, limit,
                             CLAMPED: tl.constexpr, BLOCK_F: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = cols < F
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + F + cols, mask=mask, other=0.0).to(tl.float32)
    if CLAMPED:
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit) + 1.0
        h = gate * tl.sigmoid(alpha * gate) * up
    else:
        h = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_out + cols, h.to(out_ptr.dtype.element_ty), mask=mask)


def gated_activation(gu, activation: str, alpha: float = 1.702, limit: float = 7.0):
    """gu [A, 2F] (gate columns then up columns) -> [A, F] in gu's dtype."""
    if activation not in ("swiglu", "clamped_swiglu"):
        raise ValueError(f"unknown activation {activation!r}")
    A, F2 = gu.shape
    F = F2 // 2
    out = torch.empty((A, F), dtype=gu.dtype, device=gu.device)
    if A:
        _gated_activation_kernel[(A, triton.cdiv(F, BLOCK))](
            gu, out, F, gu.stride(0), out.stride(0), alpha, limit,
            CLAMPED=activation == "clamped_swiglu", BLOCK_F=BLOCK)
    return out
