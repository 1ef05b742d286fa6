"""Refitting a measured cost table to its own timed samples under the current cost model.

A table keeps every timed calibration point (`CostTable.samples`). When the cost model gains a
term (a LayerWork field, a DeviceParams constant), the samples' work is derived again from each
call's shape and the constants are fitted again: no GPU time. A call's shape is what it computed:
its padded rows, each decode row's context, each prefill work's positions, and the distinct
experts and row tiles it measured. Grid v2 samples record it (`shape`); the first H200 grid's
samples do not, so their shapes are read back from the grid point's label (`legacy_shapes`) and
their measured experts and tiles from the work they stored.
"""

from __future__ import annotations

import copy
import re

import numpy as np

from lp_jax.model.config import get_preset
from lp_jax.sim.cost_model import CostTable, source_commit
from lp_jax.sim.expert_load import expert_load
from lp_jax.sim.fit import error_summary, fit_table
from lp_jax.sim.work import WorkModel, kernel_block_m, kernel_prefill_q_tile

_DECODE = re.compile(r"decode B=(\d+) ctx=(\d+)$")
_PREFILL = re.compile(r"prefill (\d+) rows(?: after (\d+))?$")
_REPEATED = re.compile(r"prefill (\d+) rows as (\d+) repeated-token requests$")
_MIXED = re.compile(r"mixed (\d+) decodes \+ (\d+) prefill rows$")
_RANGE = re.compile(r"range \[(\d+), (\d+)\) (\d+) rows$")


def legacy_shapes(case: str, middle_context: int) -> tuple[list[int], list[tuple[int, int]]]:
    """(decode contexts, prefill positions) of a first-grid point from its label (the grid of
    lp_jax.bench.calibrate before shapes were recorded); middle_context: the grid's middle decode
    context, at which its mixed points ran their decodes. ValueError for a label it does not know."""
    if m := _DECODE.match(case):
        return [int(m[2])] * int(m[1]), []
    if m := _REPEATED.match(case):
        n, k = int(m[1]), int(m[2])
        return [], [(0, n // k)] * k
    if m := _PREFILL.match(case):
        start = int(m[2] or 0)
        return [], [(start, start + int(m[1]))]
    if m := _MIXED.match(case):
        return [middle_context] * int(m[1]), [(0, int(m[2]))]
    if m := _RANGE.match(case):
        return [], [(0, int(m[3]))]
    raise ValueError(f"no shape known for the grid point {case!r}")


def work_model(table: CostTable, prefill_q_tile: int) -> WorkModel:
    """The WorkModel a table's calls are described with (its model, dtype, kernels' tiles)."""
    model = get_preset(table.model)
    load = expert_load(model.num_experts, model.num_experts_per_tok) if model.is_moe else None
    kind = table.kernel_tiles_device or table.device_kind
    return WorkModel(model, np.dtype(table.dtype).itemsize, table.backend, 0, load,
                     kernel_block_m(model, kind) if model.is_moe else None, prefill_q_tile=prefill_q_tile)


def rederive(table: CostTable, prefill_q_tile: int) -> list[dict]:
    """The table's samples with each step's work derived again by the current WorkModel at this
    prefill tile (Pallas tables; a reference table's samples are returned as they are)."""
    samples = copy.deepcopy(table.samples)
    if table.backend != "pallas":
        return samples
    work = work_model(table, prefill_q_tile)
    model = work.model
    contexts = sorted({int(m[2]) for s in samples if s["kind"] == "iteration" and (m := _DECODE.match(s["case"]))})
    middle = contexts[len(contexts) // 2] if contexts else 0
    for s in samples:
        if s["kind"] != "iteration":
            continue
        s["launch_bound"] = True  # every lp-jax calibrate grid point was launched back to back
        for call in s["calls"]:
            shape = call.get("shape")
            if shape is None:
                decodes, prefills = legacy_shapes(s["case"], middle)
                w = next(iter(call["work"].values()))
                distinct = tiles = None
                if model.is_moe:
                    valid = len(decodes) + sum(e - b for b, e in prefills)
                    distinct = w["expert_bytes"] / work.expert_bytes_each
                    bm = work.block_m(valid * model.num_experts_per_tok)
                    tiles = w["expert_flops"] / (bm * work.expert_flops_per_row)
                shape = dict(rows=int(w["rows"]), decode_contexts=decodes, prefills=[list(p) for p in prefills],
                             distinct=distinct, tiles=tiles)
                call["shape"] = shape
            works = work.layer_works(shape["rows"], shape["decode_contexts"], [tuple(p) for p in shape["prefills"]],
                                     distinct=shape["distinct"], tiles=shape["tiles"])
            call["work"] = {t: works[t]._asdict() for t in call["work"]}
    return samples


def refit(table: CostTable, prefill_q_tile: int | None = None) -> CostTable:
    """`table` refitted to its own samples under the current cost model, at the attention kernel's
    prefill tile on the table's device (or `prefill_q_tile`); its fit records the error before."""
    if prefill_q_tile is None:
        prefill_q_tile = (kernel_prefill_q_tile(get_preset(table.model), table.kernel_tiles_device or table.device_kind)
                          if table.backend == "pallas" else table.prefill_q_tile)
    before = error_summary(table, table.samples)
    base = table.with_params(prefill_q_tile=prefill_q_tile)
    new = fit_table(base, rederive(table, prefill_q_tile), readback_s=table.host.readback_s)
    return new.with_params(fit=dict(new.fit, before_refit=before),
                           source=f"{table.source}; refitted to its own samples by lp_jax.sim.refit at {source_commit()}")
