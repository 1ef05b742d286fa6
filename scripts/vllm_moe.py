"""vLLM's Triton fused-MoE kernel as a peer of our MoE layer: the routing-align step, the
configuration choice and the launches, written here; the kernel itself comes from the
git-ignored .peers/vllm_fused_moe/ (`scripts/fetch_peers.py`; never committed).

The layer, as vLLM runs it for bf16 weights:
  align (sort the T*K (token, expert) pairs by expert, pad each expert's group to the row block)
  -> fused_moe_kernel: gate/up for every row block of one expert, x rows gathered in its loads
  -> gated activation (a small Triton kernel of ours, `triton_activation.py`; vLLM uses a CUDA op)
  -> fused_moe_kernel: down, router weight multiplied in its epilogue -> sum of each token's K rows.
Weights in vLLM's layout: w1 [E, 2F, D] (gate rows then up rows, K contiguous), w2 [E, D, F].
Tiny batches (T*K*4 <= E) skip the align step as vLLM does: one row block per (token, expert).

`align_block_size` is written against the array API that numpy (>= 2) and torch share, so the CPU
tests run it on numpy arrays and the bench on CUDA tensors (no host sync: it can be captured in a
CUDA graph). Imports of torch and triton happen only when a layer is built.

Shapes: T tokens, K experts per token, A = T*K rows, E experts, D hidden, F expert hidden.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os

PEER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".peers", "vllm_fused_moe")


# ---------------------------------------------------------------- routing align

def align_block_size(ids_TK, block_m: int, num_experts: int, xp):
    """The row layout of vLLM's fused MoE: assignments sorted by expert (stable), each expert's
    group padded to a multiple of block_m.

    ids_TK: [T, K] integer expert ids in [0, E). xp: the array namespace (numpy or torch).
    Returns (sorted_ids [max_padded] int32: the flat assignment index t*K + k of each padded row,
    A for padding rows; expert_ids [max_padded / block_m] int32: each row block's expert, -1 past
    the last used block; num_padded [1] int32: rows in used blocks). max_padded = A + min(A, E) *
    (block_m - 1) rounded up to block_m bounds the padded rows for any routing.
    """
    E = num_experts
    flat = xp.reshape(xp.asarray(ids_TK, dtype=xp.int64), (-1,))
    A = flat.shape[0]
    dev = flat.device
    max_padded = -(-(A + min(A, E) * (block_m - 1)) // block_m) * block_m
    order = xp.argsort(flat, stable=True)
    sorted_e = flat[order]
    first = xp.searchsorted(sorted_e, xp.arange(E + 1, dtype=xp.int64, device=dev), side="left")
    counts = first[1:] - first[:-1]
    padded_end = xp.cumsum((counts + block_m - 1) // block_m * block_m, 0)
    padded_start = padded_end - (counts + block_m - 1) // block_m * block_m
    rank = xp.arange(A, dtype=xp.int64, device=dev) - first[sorted_e]
    sorted_ids = xp.full((max_padded,), A, dtype=xp.int32, device=dev)
    sorted_ids[padded_start[sorted_e] + rank] = xp.asarray(order, dtype=xp.int32)
    block_start = xp.arange(max_padded // block_m, dtype=xp.int64, device=dev) * block_m
    expert = xp.searchsorted(padded_end, block_start, side="right")
    expert_ids = xp.asarray(xp.where(expert < E, expert, -1), dtype=xp.int32)
    return sorted_ids, expert_ids, xp.asarray(padded_end[E - 1:], dtype=xp.int32)


def uses_naive_blocks(T: int, K: int, E: int) -> bool:
    """vLLM's low-latency path: so few assignments that each gets its own row block (no align)."""
    return T * K * 4 <= E


# ---------------------------------------------------------------- configurations

def vllm_device_name(name: str) -> str:
    """torch.cuda.get_device_name() as vLLM names its config files (H200 family -> NVIDIA_H200)."""
    name = name.replace(" ", "_")
    return "NVIDIA_H200" if "H200" in name.split("_") else name


def tuned_configs(E: int, F: int, device_name: str, peer_dir: str = PEER_DIR) -> dict[int, dict] | None:
    """vLLM's tuned bf16 configurations for E experts of hidden F on this device, {tokens: config};
    None when the wheel shipped none (fetch_peers copies the benchmarked shapes' files)."""
    path = os.path.join(peer_dir, "configs", f"E={E},N={F},device_name={vllm_device_name(device_name)}.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        table = json.load(fh)
    table.pop("triton_version", None)
    return {int(k): v for k, v in table.items()}


def nearest_key(configs: dict[int, dict], T: int) -> int:
    """The token count whose entry serves T tokens, as vLLM picks it (nearest; the smaller on a tie)."""
    return min(configs, key=lambda m: abs(m - T))


def sweep_candidates(T: int, K: int, E: int) -> list[dict]:
    """Our small sweep for shapes without a tuned vLLM file: four configurations per regime of
    rows per expert (few: small row blocks, deep K tiles; many: 128-row blocks, grouped launch
    order for L2 reuse, 8 warps)."""
    per_expert = T * K / E
    def c(bm, bn, bk, gm, warps, stages):
        return dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=gm,
                    num_warps=warps, num_stages=stages)
    if per_expert <= 16:
        return [c(16, 64, 128, 1, 4, 4), c(16, 128, 64, 1, 4, 4), c(16, 64, 64, 1, 4, 5), c(32, 64, 128, 1, 4, 3)]
    if per_expert <= 128:
        return [c(32, 64, 128, 1, 4, 3), c(64, 64, 64, 1, 4, 4), c(64, 128, 64, 1, 4, 3), c(64, 128, 64, 1, 8, 3)]
    return [c(64, 128, 64, 1, 8, 3), c(128, 128, 64, 16, 8, 3), c(128, 256, 64, 16, 8, 3), c(128, 128, 64, 1, 4, 4)]


# ---------------------------------------------------------------- the layer (GPU)

@functools.cache
def load_kernel(peer_dir: str = PEER_DIR):
    """The extracted kernel (loaded once, so Triton compiles each configuration once); a clear
    error when fetch_peers has not been run."""
    path = os.path.join(peer_dir, "fused_moe_kernel.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: run `python scripts/fetch_peers.py` (and carry .peers "
                                "to the GPU machine)")
    spec = importlib.util.spec_from_file_location("vllm_fused_moe_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fused_moe_kernel


def vllm_weights(w_gate, w_up, w_down, b_gate=None, b_up=None, b_down=None):
    """Our [E, D, F] / [E, F, D] torch tensors in vLLM's layout: w1 [E, 2F, D], w2 [E, D, F]
    (K contiguous), biases [E, 2F] and [E, D] (or None)."""
    import torch
    w1 = torch.cat([w_gate, w_up], dim=2).transpose(1, 2).contiguous()
    w2 = w_down.transpose(1, 2).contiguous()
    b1 = torch.cat([b_gate, b_up], dim=1).contiguous() if b_gate is not None else None
    return w1, w2, b1, b_down.contiguous() if b_down is not None else None


def _launch(kernel, a, b, c, bias, weights_A, sorted_ids, expert_ids, num_padded, *, top_k, mul_weight,
            cfg, num_rows, T):
    """One fused_moe_kernel call: c[row] = a[row // top_k] @ b[expert].T (+ bias) (x weight)."""
    import triton
    import triton.language as tl
    cfg = dict(cfg)
    bm = cfg["BLOCK_SIZE_M"]
    if sorted_ids is None:
        em = num_rows * bm
    else:
        em = sorted_ids.shape[0]
        if T < bm:  # as vLLM: at most T*K experts are hot, so at most that many blocks are used
            em = min(em, num_rows * bm)
    N, Kdim = b.shape[1], b.shape[2]
    grid = (triton.cdiv(em, bm) * triton.cdiv(N, cfg["BLOCK_SIZE_N"]),)
    kernel[grid](
        a, b, c, bias, None, None, weights_A, sorted_ids, expert_ids, num_padded,
        N, Kdim, em, num_rows,
        a.stride(0), a.stride(1), b.stride(0), b.stride(2), b.stride(1), c.stride(0), c.stride(1),
        0, 0, 0, 0, 0,
        bias.stride(0) if bias is not None else 0, bias.stride(1) if bias is not None else 0,
        0, 0,
        naive_block_assignment=sorted_ids is None, GROUP_SIZE_M=cfg["GROUP_SIZE_M"],
        BLOCK_SIZE_M=bm, BLOCK_SIZE_N=cfg["BLOCK_SIZE_N"], BLOCK_SIZE_K=cfg["BLOCK_SIZE_K"], SPLIT_K=1,
        MUL_ROUTED_WEIGHT=mul_weight, top_k=top_k, compute_type=tl.bfloat16, use_fp8_w8a8=False,
        use_int8_w8a8=False, use_int8_w8a16=False, per_channel_quant=False, HAS_BIAS=bias is not None,
        SWAP_AB=False, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


def make_layer(weights, activation: str, config, *, alpha: float = 1.702, limit: float = 7.0, peer_dir=PEER_DIR):
    """layer(x [T, D] bf16, w_TK [T, K] f32, ids_TK [T, K] int64) -> [T, D] bf16 on vLLM's kernel.

    weights: `vllm_weights(...)`; config(T) -> the kernel configuration for T tokens (one for
    both matmuls, as vLLM does). Allocates its buffers per call (CUDA-graph capture reuses them)."""
    import torch

    from triton_activation import gated_activation

    kernel = load_kernel(peer_dir)
    w1, w2, b1, b2 = weights
    E, F2, D = w1.shape

    def layer(x, w_TK, ids_TK):
        T, K = ids_TK.shape
        A = T * K
        cfg = config(T)
        if uses_naive_blocks(T, K, E):
            sorted_ids, expert_ids = None, ids_TK.reshape(-1).to(torch.int32)
            num_padded = torch.full((1,), A * cfg["BLOCK_SIZE_M"], dtype=torch.int32, device=x.device)
        else:
            sorted_ids, expert_ids, num_padded = align_block_size(ids_TK, cfg["BLOCK_SIZE_M"], E, torch)
        weights_A = w_TK.reshape(-1).to(torch.float32)
        gu = torch.empty((A, F2), dtype=x.dtype, device=x.device)
        _launch(kernel, x, w1, gu, b1, weights_A, sorted_ids, expert_ids, num_padded, top_k=K, mul_weight=False,
                cfg=cfg, num_rows=A, T=T)
        h = gated_activation(gu, activation, alpha, limit)
        out = torch.empty((A, D), dtype=x.dtype, device=x.device)
        _launch(kernel, h, w2, out, b2, weights_A, sorted_ids, expert_ids, num_padded, top_k=1, mul_weight=True,
                cfg=cfg, num_rows=A, T=T)
        return out.view(T, K, D).sum(dim=1)

    return layer
