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
import json
import os

from pallas_kernels.grouped_matmul import TileConfig

TABLE_PATH = os.path.join(os.path.dirname(__file__), "moe_tiles.json")


@dataclasses.dataclass(frozen=True)
class MoETileConfig:
    gate_up: TileConfig
    down: TileConfig

    def __post_init__(self):
        if (self.gate_up.block_m, self.gate_up.swap) != (self.down.block_m, self.down.swap):
            raise ValueError("gate/up and down must share block_m and swap (one row layout)")


def rows_bucket(rows: int) -> int:
    """Smallest power of two >= rows (>= 1)."""
    return 1 << max(rows - 1, 0).bit_length()


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


def load_table(path: str = TABLE_PATH) -> dict[tuple[int, int, int, int, str], MoETileConfig]:
    """{(E, D, F, rows bucket, device kind): config} from the JSON list written by tune_moe."""
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        entries = json.load(fh)
    return {(e["E"], e["D"], e["F"], e["rows_bucket"], e["device"]):
            MoETileConfig(TileConfig(**e["gate_up"]), TileConfig(**e["down"])) for e in entries}


TABLE = load_table()


def lookup(E: int, D: int, F: int, rows: int, device_kind: str) -> MoETileConfig:
    """The tuned entry of this shape and device at the nearest rows bucket (in log2 steps);
    `default_config` if the table holds none for this shape and device."""
    b = rows_bucket(rows).bit_length()
    near = [(abs(k[3].bit_length() - b), -k[3], cfg) for k, cfg in TABLE.items()
            if k[:3] == (E, D, F) and k[4] == device_kind]
    return min(near, key=lambda t: t[:2])[2] if near else default_config(E, D, F, rows)
