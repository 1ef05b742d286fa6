"""Reading a compiled step's optimized HLO: are layers of the stacked weights copied, and how many
operations (kernel launches on a GPU) does it run?"""

from __future__ import annotations

import re

import numpy as np


def layer_slices(hlo: str) -> dict:
    """Dynamic slices of size 1 on the leading (layer) axis in optimized HLO text, grouped by
    the kind of the fusion that holds them ("kLoop" fusions write the slice to memory: a copy;
    a gemm fusion or XLA's dynamic-slice fusion reads it in place). Returns {kind: [count,
    bytes per execution]}."""
    item = {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u8": 1, "f8e4m3fn": 1}
    owner, kinds, found = None, {}, []
    for line in hlo.splitlines():
        if m := re.match(r"^%?([\w.-]+) .*\{$", line):
            owner = m.group(1)
        if " dynamic-slice(" in line and "dynamic_slice_sizes={1," in line:
            dtype, dims = re.search(r"= (\w+)\[([\d,]*)\]", line).groups()
            found.append((owner, dtype, dims))
        if m := re.search(r"fusion\(.*kind=(\w+), calls=%?([\w.-]+)", line):
            config = re.search(r'"kind":"(\w+)"', line)
            kinds[m.group(2)] = config.group(1) if config else m.group(1)
    out: dict[str, list] = {}
    for owner, dtype, dims in found:
        n = int(np.prod([int(d) for d in dims.split(",") if d])) * item.get(dtype, 4)
        kind = kinds.get(owner, "unfused")
        out.setdefault(kind, [0, 0])
        out[kind][0] += 1
        out[kind][1] += n
    return out


# Instructions that launch no work: values passed around, reinterpreted or named.
FREE_OPCODES = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast"})


def entry_ops(hlo: str) -> dict[str, int]:
    """Operations of the ENTRY computation of optimized HLO text by opcode (fusion, custom-call,
    sort, copy, ...), FREE_OPCODES left out: after fusion each is one kernel launch on a GPU
    (a custom-call is a Pallas kernel or a library call)."""
    counts: dict[str, int] = {}
    in_entry = False
    for line in hlo.splitlines():
        if line.startswith("ENTRY "):
            in_entry = True
            continue
        if in_entry and line.startswith("}"):
            break
        m = in_entry and re.match(r"\s*(?:ROOT )?%?[\w.-]+ = (?:\([^=]*?\)|\S+) ([\w-]+)\(", line)
        if m and m.group(1) not in FREE_OPCODES:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts
