"""Tile configurations of the paged-attention kernel, tuned per shape and device.

Key: (H, N, A, rows bucket, kind, device kind): H query heads, N KV heads, A head dim, rows = the
call's T rounded up to a power of two, kind = "decode" when the call has no more rows than
sequences (T <= B: every sequence contributes about one row) else "prefill". Entries come from
`scripts/tune_attention.py` on the named device and are stored in `attention_tiles.json` beside
this file; `tile_tables` says which entry serves a call (this device's, else the nearest tuned
Hopper device's, at the nearest rows bucket of the same kind; else `default_config`).
"""

from __future__ import annotations

import dataclasses
import os

from pallas_kernels.paged_attention_kernel import SMEM_BYTES, AttentionTileConfig
from pallas_kernels.tile_tables import TileChoice, TileTable

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


def load_table(path: str = TABLE_PATH) -> TileTable:
    """The JSON list written by tune_attention, keyed by (H, N, A, kind)."""
    return TileTable(path, lambda e: (e["H"], e["N"], e["A"], e["kind"]),
                     lambda e: AttentionTileConfig(**e["config"]))


TABLE = load_table()


def choose(H: int, N: int, A: int, T: int, B: int, device_kind: str, table: TileTable = TABLE) -> TileChoice:
    """The configuration of a call of T rows over B sequences on device_kind, and which table
    entry it came from (`tile_tables.TileTable.choose`)."""
    return table.choose((H, N, A, call_kind(T, B)), T, device_kind, lambda: default_config(H, N, A, T, B))


def lookup(H: int, N: int, A: int, T: int, B: int, device_kind: str) -> AttentionTileConfig:
    """`choose(...).config`."""
    return choose(H, N, A, T, B, device_kind).config
