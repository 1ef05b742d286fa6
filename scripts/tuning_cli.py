"""What the tile sweeps (tune_moe.py, tune_attention.py) share: their table/log options and the
reading and writing of a tile table (a JSON list of entries) and of the sweep log.

Entries are keyed by JAX's device kind, so a sweep on an H200 adds "NVIDIA H200" entries beside
the H100's (the tables' lookup prefers a device's own entries, `pallas_kernels.tile_tables`)."""

from __future__ import annotations

import argparse
import json
import os


def add_table_args(ap: argparse.ArgumentParser, table_path: str, log_name: str) -> None:
    """--reps, --log and --table-out (the package's table by default)."""
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--log", default=log_name, help="the whole sweep, as JSON")
    ap.add_argument("--table-out", default=table_path,
                    help="where to write the updated table (default: the package's table; on a "
                         "machine whose files do not come back, point it at the results folder)")


def start_table(table_path: str, table_out: str) -> list:
    """The entries a sweep starts from: table_out's when it exists (an earlier sweep of the same
    run wrote it, so sweeps into one file add up), else the package's table."""
    return read_json(table_out if os.path.exists(table_out) else table_path)


def read_json(path: str) -> list:
    with open(path) as fh:
        return json.load(fh)


def write_json(path: str, entries: list) -> None:
    with open(path, "w") as fh:
        json.dump(entries, fh, indent=1)
