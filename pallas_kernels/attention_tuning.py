"""Tile configurations of the paged-attention kernel, tuned per shape and device.

Key: (H, N, A, rows bucket, kind, device kind): H query heads, N KV heads, A head dim, rows = the
call's T rounded up to a power of two, kind = "decode" when the call has no more rows than
sequences (T <= B: every sequence contributes about one row) else "prefill". Entries come from
`scripts/tune_attention.py` on the named device and are stored in `attention_tiles.json` beside
this file; a rows bucket between tuned ones takes the nearest tuned bucket of the same kind,
shapes or devices not in the table get `default_config`.
"""

from __future__ import annotations

import dataclasses
import json
import os

from pallas_kernels.moe_tuning import rows_bucket
from pallas_kernels.paged_attention_kernel import SMEM_BYTES, AttentionTileConfig

TABLE_PATH = os.path.join(os.path.dirname(__file__), "attention_tiles.json")


def call_kind(T: int, B: int) -> str:
    return "decode" if T <= B else "prefill"


def default_config(H: int, N: int, A: int, T: int, B: int) -> AttentionTileConfig:
    """Heuristic when the table has no entry. Decode: 64 wgmma rows (the R heads of as few
    tokens as fill them), 128-key blocks and as deep a ring as SMEM holds (up to 8), since key
    bandwidth is all that matters; key splits chosen per call. Prefill: 128 rows (two compute
    warpgroups) and 128-key blocks, as deep a ring as fits (up to 4)."""
    R = H // N
    if call_kind(T, B) == "decode":
        return deepest(AttentionTileConfig(block_q=max(1, 64 // R), block_kv=128), R, A, 8)
    return deepest(AttentionTileConfig(block_q=max(1, 128 // R), block_kv=128), R, A, 4)


def deepest(cfg: AttentionTileConfig, R: int, A: int, most: int) -> AttentionTileConfig:
    """cfg with the most stages (<= most) whose SMEM fits, keeping ~8 KB for barriers."""
    fits = [s for s in range(1, most + 1)
            if dataclasses.replace(cfg, stages=s).smem_bytes(R, A) <= SMEM_BYTES - 8192]
    return dataclasses.replace(cfg, stages=max(fits))


def load_table(path: str = TABLE_PATH) -> dict[tuple, AttentionTileConfig]:
    """{(H, N, A, rows bucket, kind, device kind): config} from the JSON list of tune_attention."""
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        entries = json.load(fh)
    return {(e["H"], e["N"], e["A"], e["rows_bucket"], e["kind"], e["device"]): AttentionTileConfig(**e["config"])
            for e in entries}


TABLE = load_table()


def lookup(H: int, N: int, A: int, T: int, B: int, device_kind: str) -> AttentionTileConfig:
    """The tuned entry of this shape, kind and device at the nearest rows bucket (log2 steps);
    `default_config` if the table holds none."""
    b, kind = rows_bucket(T).bit_length(), call_kind(T, B)
    near = [(abs(k[3].bit_length() - b), -k[3], cfg) for k, cfg in TABLE.items()
            if k[:3] == (H, N, A) and k[4:] == (kind, device_kind)]
    return min(near, key=lambda t: t[:2])[2] if near else default_config(H, N, A, T, B)
