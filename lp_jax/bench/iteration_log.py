"""A traced run's iterations as a file (iterations.jsonl in a study point's folder): one JSON
object per line, per iteration, in dispatch order:

    iteration, start_s, end_s   the engine's clock (s): dispatch began / its tokens were read back
    decode_contexts             keys each decode row saw (its position + 1)
    prefill                     [[request id, start, end, completes its prompt, [layer lo, hi)], ...]
    prefill_layers              the plan's prefill layer range [lo, hi)
    preempted                   requests preempted at it
    segments                    per layer-range call group: [lo, hi), the distinct experts and row
                                tiles it measured, averaged over its layers (MoE models)
    expert_bytes, expert_streamed_bytes   as the engine accounts them (bytes)

A replay needs nothing else to rebuild each iteration's plan shape (lp_jax.bench.iteration_replay).
"""

from __future__ import annotations

import json

import numpy as np

ITERATIONS_FILE = "iterations.jsonl"


def _segment(seg) -> dict:
    lo, hi = seg.layer_lo, seg.layer_hi
    counts, tiles = np.asarray(seg.expert_counts_L), np.asarray(seg.expert_tiles_L)
    return dict(layers=[lo, hi], distinct=float(counts[lo:hi].mean()) if hi > lo and counts.size else 0.0,
                tiles=float(tiles[lo:hi].mean()) if hi > lo and tiles.size else 0.0)


def record_row(rec) -> dict:
    """One IterationRecord (lp_jax.engine.engine) as a JSON-able dict."""
    ranges = rec.prefill_ranges or [rec.prefill_layers] * len(rec.prefill)
    completes = rec.prefill_completes or [False] * len(rec.prefill)
    return dict(iteration=rec.iteration, start_s=rec.start_s, end_s=rec.end_s,
                decode_contexts=list(rec.decode_contexts),
                prefill=[[rid, s, e, bool(c), list(r)] for (rid, s, e), c, r in zip(rec.prefill, completes, ranges)],
                prefill_layers=list(rec.prefill_layers), preempted=list(rec.preempted_ids),
                segments=[_segment(s) for s in rec.segments], expert_bytes=rec.expert_bytes,
                expert_streamed_bytes=rec.expert_streamed_bytes)


def write_iterations(records, path: str) -> str:
    """IterationRecords to a JSON-lines file; its path."""
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(record_row(rec)) + "\n")
    return path


def read_iterations(path: str) -> list[dict]:
    """The rows of an iterations.jsonl file. ValueError naming the line of a malformed one."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not JSON ({e})") from None
            missing = {"iteration", "start_s", "end_s", "decode_contexts", "prefill", "prefill_layers"} - set(row)
            if missing:
                raise ValueError(f"{path}:{i}: missing {', '.join(sorted(missing))}")
            rows.append(row)
    return rows
