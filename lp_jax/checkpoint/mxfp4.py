"""MXFP4 (OCP microscaling FP4): 32 FP4 e2m1 codes share one E8M0 exponent. GPT-OSS publishes its
experts in it; dequantised exactly on the host."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

MXFP4_GROUP = 32  # values sharing one E8M0 scale; 16 bytes of two FP4 codes each

# FP4 e2m1 code -> value: sign bit 3, then the magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6.
FP4_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                     -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray, dtype=jnp.bfloat16) -> np.ndarray:
    """MXFP4 -> floating point, on the host.

    blocks [..., G, 16] uint8: 32 FP4 (e2m1) codes per group, two per byte, low nibble first.
    scales [..., G] uint8: one E8M0 exponent per group, bias 127.
    Returns [..., G * 32] in `dtype`: value = FP4 * 2^(scale - 127). Exact in bf16 and f32, since an
    FP4 value has one mantissa bit; computed in f32 then cast.
    """
    if blocks.shape[-1:] != (MXFP4_GROUP // 2,) or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {blocks.shape} and scales {scales.shape} do not match: "
                         f"expected blocks [..., G, {MXFP4_GROUP // 2}] and scales [..., G]")
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1)  # [..., G, 16, 2]: low nibble first
    values = FP4_E2M1[codes].reshape(*scales.shape, MXFP4_GROUP)
    exponents = scales.astype(np.int32)[..., None] - 127
    # ldexp, not values * 2.0**e: 2^-127 is a float32 subnormal that must stay exact. Exponents
    # near 127 overflow to inf, as they do in transformers; real checkpoints never use them.
    with np.errstate(over="ignore"):
        out = np.ldexp(values, exponents)
    return out.reshape(*scales.shape[:-1], -1).astype(dtype)
