"""Tuned tile tables keyed by device name, and which entry serves a device that was never tuned.

A table (`moe_tiles.json`, `attention_tiles.json`) is a JSON list of entries, each tuned for one
shape, one rows bucket (rows rounded up to a power of two) and one device kind (JAX's
`device_kind`, e.g. "NVIDIA H100 80GB HBM3"). A call looks up its shape in this order:

  1. the entries of its own device kind;
  2. if the device is a Hopper GPU (sm_90) without entries for this shape, the entries of the
     nearest tuned Hopper device: the same SM is what a tile depends on (wgmma shapes, 228 KB of
     SMEM), so the nearest is the one with the closest SM count, then the closest HBM bandwidth
     (the H200 is an H100 SM with 4.8 instead of 3.35 TB/s);
  3. otherwise the kernel's `default_config`.

Within one device's entries for a shape, the nearest rows bucket (in log2 steps, the larger on a
tie) serves. `TileChoice.describe()` says which of the three served, for bench output and engine
records ("H100 table (nearest tuned Hopper) for NVIDIA H200").
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

# Hopper parts: SM count and HBM bandwidth (TB/s, datasheet). Unknown names are judged by the
# device's compute capability when it is the device JAX runs on (`is_hopper`).
HOPPER_SPECS: dict[str, tuple[int, float]] = {
    "NVIDIA H100 80GB HBM3": (132, 3.35),
    "NVIDIA H100 PCIe": (114, 2.0),
    "NVIDIA H100 NVL": (132, 3.9),
    "NVIDIA H800": (132, 3.35),
    "NVIDIA H200": (132, 4.8),
    "NVIDIA H200 NVL": (132, 4.8),
    "NVIDIA H20": (78, 4.0),
    "NVIDIA GH200 480GB": (132, 4.0),
}


def rows_bucket(rows: int) -> int:
    """Smallest power of two >= rows (>= 1)."""
    return 1 << max(rows - 1, 0).bit_length()


def short_name(device_kind: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "H100" (the model number, for one-line reports)."""
    words = device_kind.split()
    return words[1] if len(words) > 1 and words[0] == "NVIDIA" else device_kind


def is_hopper(device_kind: str) -> bool:
    """A known Hopper name, or the device JAX runs on when its compute capability is 9.x."""
    if device_kind in HOPPER_SPECS:
        return True
    import jax

    dev = jax.devices()[0]
    return (dev.platform == "gpu" and dev.device_kind == device_kind
            and str(getattr(dev, "compute_capability", "")).startswith("9"))


def _hopper_spec(device_kind: str) -> tuple[int, float]:
    """(SM count, TB/s) of a Hopper device; an unknown one is read from JAX (bandwidth unknown:
    the H100's)."""
    if device_kind in HOPPER_SPECS:
        return HOPPER_SPECS[device_kind]
    import jax

    return getattr(jax.devices()[0], "core_count", None) or 132, 3.35


def hopper_neighbours(device_kind: str, tuned_kinds) -> list[str]:
    """The tuned Hopper device kinds other than device_kind, nearest first (SM count, then HBM
    bandwidth, then name); [] when device_kind is not a Hopper GPU."""
    if not is_hopper(device_kind):
        return []
    sms, bw = _hopper_spec(device_kind)
    others = [k for k in set(tuned_kinds) if k != device_kind and k in HOPPER_SPECS]
    return sorted(others, key=lambda k: (abs(HOPPER_SPECS[k][0] - sms), abs(HOPPER_SPECS[k][1] - bw), k))


@dataclasses.dataclass(frozen=True)
class TileChoice:
    """The configuration a call gets and where it came from.

    source: "tuned" (this device's entry), "nearest_hopper" (another Hopper device's entry) or
      "default" (no entry: the kernel's default_config).
    table_device: the device kind whose entry served (None for "default").
    rows_bucket: the entry's rows bucket (None for "default").
    """
    config: Any
    source: str
    device: str
    table_device: str | None = None
    rows_bucket: int | None = None

    def describe(self) -> str:
        if self.source == "tuned":
            return f"{short_name(self.device)} table (tuned here) for {self.device}"
        if self.source == "nearest_hopper":
            return f"{short_name(self.table_device)} table (nearest tuned Hopper) for {self.device}"
        return f"default_config (no tuned entry for this shape) for {self.device}"


class TileTable:
    """The entries of one JSON table: {shape key: {device kind: {rows bucket: config}}}.

    shape_key(entry) -> hashable key of an entry's shape (and call kind); make(entry) -> its
    config. Looking up goes by `choose`."""

    def __init__(self, path: str, shape_key: Callable[[dict], tuple], make: Callable[[dict], Any]):
        self.path = path
        self.entries: dict[tuple, dict[str, dict[int, Any]]] = {}
        if os.path.exists(path):
            with open(path) as fh:
                for e in json.load(fh):
                    by_device = self.entries.setdefault(shape_key(e), {})
                    by_device.setdefault(e["device"], {})[e["rows_bucket"]] = make(e)

    def devices(self) -> set[str]:
        return {d for by_device in self.entries.values() for d in by_device}

    def choose(self, key: tuple, rows: int, device_kind: str, default: Callable[[], Any]) -> TileChoice:
        """The entry serving `rows` rows of shape `key` on device_kind (module docstring's order)."""
        by_device = self.entries.get(key, {})
        order = [device_kind] + hopper_neighbours(device_kind, by_device)
        for i, kind in enumerate(order):
            if kind in by_device:
                bucket = _nearest_bucket(by_device[kind], rows)
                return TileChoice(by_device[kind][bucket], "tuned" if i == 0 else "nearest_hopper",
                                  device_kind, kind, bucket)
        return TileChoice(default(), "default", device_kind)

    def describe_device(self, device_kind: str) -> str:
        """Which table a device uses, for one report line: its own entries, the nearest tuned
        Hopper's, or none."""
        if device_kind in self.devices():
            return f"{short_name(device_kind)} table (tuned here) for {device_kind}"
        near = hopper_neighbours(device_kind, self.devices())
        if near:
            return f"{short_name(near[0])} table (nearest tuned Hopper) for {device_kind}"
        return f"default_config (no tuned Hopper table) for {device_kind}"


def _nearest_bucket(buckets: dict[int, Any], rows: int) -> int:
    b = rows_bucket(rows).bit_length()
    return min(buckets, key=lambda k: (abs(k.bit_length() - b), -k))
