"""The one place that chooses between the Pallas Mosaic GPU kernels and the pure-jnp references.

`backend=None` means: "pallas" when the default JAX device is an NVIDIA Hopper GPU (compute
capability 9.x), "reference" elsewhere. The environment variable LP_JAX_KERNELS=reference|pallas
overrides the automatic choice (e.g. to compare both on the GPU).

MoE layers on the Pallas backend run the grouped layer (`moe.py`) at every size by default. The
decode-size layer (`moe_decode.py`) is opt-in until it is measured on the H200:
LP_JAX_MOE_DECODE_MAX_TOKENS=N (1 <= N <= moe_decode.DECODE_MAX_TOKENS = 64) sends calls of up to
N tokens down it; unset or 0 keeps every call on the grouped layer.
"""

from __future__ import annotations

import functools
import os

import jax

BACKENDS = ("reference", "pallas")


@functools.cache
def _is_hopper() -> bool:
    dev = jax.devices()[0]
    if dev.platform != "gpu":
        return False
    cc = getattr(dev, "compute_capability", "")
    return str(cc).startswith("9")


def resolve_backend(backend: str | None = None) -> str:
    backend = backend or os.environ.get("LP_JAX_KERNELS") or ("pallas" if _is_hopper() else "reference")
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {BACKENDS}")
    return backend


def pallas_moe_supports(D: int, F: int) -> bool:
    """The grouped-matmul kernels tile D and F in multiples of 64 (wgmma and TMA granularity)."""
    return D % 64 == 0 and F % 64 == 0


def _moe_impl(D: int, F: int, backend: str | None) -> str:
    """The backend serving MoE layers of these shapes: automatic choice (backend None) takes the
    reference for shapes the kernels do not tile; an explicit "pallas" lets the kernel raise."""
    chosen = resolve_backend(backend)
    if chosen == "pallas" and backend is None and not pallas_moe_supports(D, F):
        chosen = "reference"
    return chosen


def moe_decode_max_tokens() -> int:
    """The most tokens a Pallas MoE call sends down the decode-size path, from
    LP_JAX_MOE_DECODE_MAX_TOKENS (an integer in [0, moe_decode.DECODE_MAX_TOKENS]); unset or 0:
    never (the grouped layer everywhere, the hardware-verified default)."""
    from pallas_kernels.moe_decode import DECODE_MAX_TOKENS
    text = os.environ.get("LP_JAX_MOE_DECODE_MAX_TOKENS", "")
    if not text:
        return 0
    if not text.isdigit() or int(text) > DECODE_MAX_TOKENS:
        raise ValueError(f"LP_JAX_MOE_DECODE_MAX_TOKENS must be an integer in [0, {DECODE_MAX_TOKENS}], "
                         f"got {text!r}")
    return int(text)


def moe_path(T: int, D: int, F: int, backend: str | None = None, decode_max_tokens: int | None = None) -> str:
    """Which implementation serves a T-token MoE call: "reference", "decode" (the decode-size
    Pallas layer, T <= decode_max_tokens, default `moe_decode_max_tokens()`) or "grouped"."""
    if _moe_impl(D, F, backend) != "pallas":
        return "reference"
    limit = moe_decode_max_tokens() if decode_max_tokens is None else decode_max_tokens
    return "decode" if T <= limit else "grouped"


def serving_backends(*, D: int, F: int | None, H: int, N: int, A: int, Z: int, dtype,
                     backend: str | None = None) -> tuple[str | None, str]:
    """(MoE, attention) backends that serve a model of these shapes under `backend` (F None: no
    MoE layers). What a compiled step depends on, so executables are keyed by it rather than by
    the raw option: None means "pallas" or "reference" depending on the device and LP_JAX_KERNELS,
    and None and "reference" build the same executables on a CPU. A Pallas MoE with the decode
    path on reads "pallas, decode <= N tokens" (N from LP_JAX_MOE_DECODE_MAX_TOKENS), so turning
    it on or changing N builds other executables; off (unset or 0) reads "pallas"."""
    moe = None if F is None else _moe_impl(D, F, backend)
    if moe == "pallas" and (limit := moe_decode_max_tokens()):
        moe = f"pallas, decode <= {limit} tokens"
    return moe, _attention_impl(H, N, A, Z, dtype, backend)


def moe_experts(x_TD, weights_TK, ids_TK, experts: dict, *, activation: str = "swiglu",
                alpha: float = 1.702, limit: float = 7.0, valid_T=None, layer=None, backend: str | None = None,
                decode_max_tokens: int | None = None):
    """Routed expert computation of one MoE layer; see `moe_reference.moe_experts_reference`
    (`layer`: index into layer-stacked expert arrays, read in place by the kernels).

    Automatic choice (backend None) takes the reference for shapes the kernels do not tile;
    an explicit backend="pallas" lets the kernel raise instead. On the kernels, calls of up to
    decode_max_tokens tokens (default `moe_decode_max_tokens()`: 0, the grouped layer at every
    size, unless LP_JAX_MOE_DECODE_MAX_TOKENS is set) take the decode-size layer."""
    D, F = experts["w_gate"].shape[-2:]
    path = moe_path(x_TD.shape[0], D, F, backend, decode_max_tokens)
    if path == "decode":
        from pallas_kernels.moe_decode import moe_experts_decode as impl
    elif path == "grouped":
        from pallas_kernels.moe import moe_experts_pallas as impl
    else:
        from pallas_kernels.moe_reference import moe_experts_reference as impl
    return impl(x_TD, weights_TK, ids_TK, experts, activation=activation, alpha=alpha, limit=limit,
                valid_T=valid_T, layer=layer)


def moe_block_m(E: int, D: int, F: int, rows: int) -> int:
    """Rows per tile (block_m) the Pallas MoE kernels take for `rows` routed assignments (tokens
    x top-k, padding included) on the default device: the grouped matmuls stream an expert's
    weights once per tile of its rows, so traffic = sum over experts of ceil(rows_e / block_m)."""
    from pallas_kernels import moe_tuning
    return moe_tuning.lookup(E, D, F, rows, jax.devices()[0].device_kind).gate_up.block_m


def pallas_attention_supports(H: int, N: int, A: int, Z: int, dtype) -> bool:
    """The paged-attention kernel tiles bf16/f16, A in {64, 128}, H / N dividing 128, pages of
    8, 16, 32 or 64 tokens (see `paged_attention.supports`)."""
    from pallas_kernels.paged_attention import supports
    return jax.numpy.dtype(dtype) in (jax.numpy.bfloat16, jax.numpy.float16) and supports(H, N, A, Z)


def _attention_impl(H: int, N: int, A: int, Z: int, dtype, backend: str | None) -> str:
    """The backend serving these attention shapes: automatic choice (backend None) takes the
    reference for shapes the kernel does not tile; an explicit "pallas" lets the kernel raise."""
    chosen = resolve_backend(backend)
    if chosen == "pallas" and backend is None and not pallas_attention_supports(H, N, A, Z, dtype):
        chosen = "reference"
    return chosen


def attention_plan(seq_T, pos_T, *, H: int, N: int, A: int, Z: int, num_seqs: int, dtype, windows,
                   backend: str | None = None):
    """The kernel's tile plan of a batch for each of `windows`, made once and shared by the
    layers of a call (`paged_attention.batch_plan`); None when the reference serves these shapes
    (it needs no plan)."""
    if _attention_impl(H, N, A, Z, dtype, backend) != "pallas":
        return None
    from pallas_kernels.paged_attention import batch_plan
    return batch_plan(seq_T, pos_T, H=H, N=N, A=A, num_seqs=num_seqs, windows=windows)


def paged_attention(q_THA, k_pool_LPZNA, v_pool_LPZNA, layer, block_table_BM, seq_T, pos_T, *,
                    window, sinks_H=None, backend: str | None = None, plan: dict | None = None, window_index=0):
    """Attention of a ragged batch over paged K/V (this call's K/V already written to the pages);
    see `attention_reference.paged_attention_reference`. plan, window_index: from
    `attention_plan` (None: planned in this call); `window` must be the plan's window at
    window_index. window_index may be every layer's index ([L] int32) and sinks_H the layer stack
    [L, H]: the kernel reads both at `layer` itself, so a layer's attention is one kernel launch
    (no per-layer slicing in XLA).

    Automatic choice (backend None) takes the reference for shapes the kernel does not tile;
    an explicit backend="pallas" lets the kernel raise instead."""
    _, H, A = q_THA.shape
    Z, N = k_pool_LPZNA.shape[2:4]
    if _attention_impl(H, N, A, Z, q_THA.dtype, backend) == "pallas":
        from pallas_kernels.paged_attention import paged_attention as kernel
        return kernel(q_THA, k_pool_LPZNA, v_pool_LPZNA, layer, block_table_BM, seq_T, pos_T, window=window,
                      sinks_H=sinks_H, plan=plan, window_index=window_index)
    from pallas_kernels.attention_reference import paged_attention_reference
    if sinks_H is not None and sinks_H.ndim == 2:
        sinks_H = sinks_H[layer]
    return paged_attention_reference(q_THA, k_pool_LPZNA, v_pool_LPZNA, layer, block_table_BM, seq_T, pos_T,
                                     window=window, sinks_H=sinks_H)


def tile_tables_report(device_kind: str | None = None) -> dict:
    """Which tuned tile table each kernel uses on a device (default: JAX's first device), for
    engine and bench records: {"moe": ..., "attention": ...}, e.g. "H100 table (nearest tuned
    Hopper) for NVIDIA H200" (`tile_tables.TileTable.describe_device`)."""
    from pallas_kernels import attention_tuning, moe_tuning
    kind = device_kind or jax.devices()[0].device_kind
    return {"moe": moe_tuning.TABLE.describe_device(kind), "attention": attention_tuning.TABLE.describe_device(kind)}
