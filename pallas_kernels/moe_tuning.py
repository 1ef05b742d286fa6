"""Tile configurations of the MoE layer's two grouped matmuls, tuned per shape and device.

Key: (E, D, F, rows bucket, device kind): E experts, D hidden (the gate/up kernel's K and the
down kernel's N), F expert hidden (gate/up N, down K), rows = tokens x top-k rounded up to a
power of two. The two kernels of one layer share block_m and the orientation (`swap`), because
they share the tile-padded row layout. Entries come from `scripts/tune_moe.py` on the named
device and stored in `moe_tiles.json` beside this file; a rows bucket between tuned ones takes the
nearest tuned bucket, shapes or devices not in the table get `default_config`.
"""

from __future__ import annotations

import dataclasses
import os

from pallas_kernels.grouped_matmul import TileConfig
from pallas_kernels.tile_tables import TileChoice, TileTable

TABLE_PATH = os.path.join(os.path.dirname(__file__), "moe_tiles.json")


@dataclasses.dataclass(frozen=True)
class MoETileConfig:
    gate_up: TileConfig
    down: TileConfig

    def __post_init__(self):
        if (self.gate_up.block_m, self.gate_up.swap) != (self.down.block_m, self.down.swap):
            raise ValueError("gate/up and down must share block_m and swap (one row layout)")


def _divisor_block(n: int, prefer: int) -> int:
    """Largest multiple of 64 that divides n and is <= prefer (64 if none)."""
    for b in range(prefer - prefer % 64, 63, -64):
        if n % b == 0:
            return b
    return 64


def default_config(E: int, D: int, F: int, rows: int) -> MoETileConfig:
    """Heuristic when the table has no entry: decode-sized groups put tokens on wgmma's N."""
    per_expert = rows / max(1, min(E, rows))
    if per_expert <= 32:
        bm = 16 if per_expert <= 16 else 32
        return MoETileConfig(
            gate_up=TileConfig(bm, _divisor_block(F, 64), stages=6, num_compute_wgs=1, swap=True),
            down=TileConfig(bm, _divisor_block(D, 128), stages=6, num_compute_wgs=1, swap=True))
    return MoETileConfig(
        gate_up=TileConfig(128, _divisor_block(F, 128), stages=4, num_compute_wgs=2),
        down=TileConfig(128, _divisor_block(D, 128), stages=4, num_compute_wgs=2))


def load_table(path: str = TABLE_PATH) -> TileTable:
    """The JSON list written by tune_moe, keyed by (E, D, F)."""
    return TileTable(path, lambda e: (e["E"], e["D"], e["F"]),
                     lambda e: MoETileConfig(TileConfig(**e["gate_up"]), TileConfig(**e["down"])))


TABLE = load_table()


def choose(E: int, D: int, F: int, rows: int, device_kind: str, table: TileTable = TABLE) -> TileChoice:
    """The configuration for `rows` (token, expert) rows of this shape on device_kind, and
    which table entry it came from (`tile_tables.TileTable.choose`)."""
    return table.choose((E, D, F), rows, device_kind, lambda: default_config(E, D, F, rows))


def lookup(E: int, D: int, F: int, rows: int, device_kind: str) -> MoETileConfig:
    """`choose(...).config`."""
    return choose(E, D, F, rows, device_kind).config


# Shared memory a kernel's pipeline and output tile may take (the SM has 228 KB; the tuned
# entries use up to 217 KB, the barriers and the runtime take a little).
SMEM_BUDGET_BYTES = 220 * 1024


def decode_config(E: int, D: int, F: int, rows: int, token_rows: int, device_kind: str) -> MoETileConfig:
    """Tiles of the decode-size layer (`moe_decode.py`): tokens on wgmma's N with block_m =
    token_rows (every active expert computes all the call's tokens). Block sizes come from the
    tuned entry for `rows` assignments when it is a decode (swap) entry, else from
    `default_config`'s decode branch; not re-tuned, only the pipeline depth is cut where the
    larger token tile would not fit in shared memory."""
    base = lookup(E, D, F, rows, device_kind)
    if not base.gate_up.swap:
        base = default_config(E, D, F, 1)

    def fit(cfg: TileConfig, num_weights: int) -> TileConfig:
        cfg = dataclasses.replace(cfg, block_m=token_rows)
        while cfg.stages > 2 and cfg.smem_bytes(num_weights) > SMEM_BUDGET_BYTES:
            cfg = dataclasses.replace(cfg, stages=cfg.stages - 1)
        return cfg

    return MoETileConfig(gate_up=fit(base.gate_up, 2), down=fit(base.down, 1))
