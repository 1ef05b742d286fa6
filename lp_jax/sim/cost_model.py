"""The simulator's cost model: seconds of one layer-range call, of a sampling call, and of the host's
work per iteration, from physical work (bytes moved, FLOPs) and a few fitted constants.

One layer of a call costs

    layer_s + row_s * rows
      + roof(dense_bytes / (BW * dense_bw),   dense_flops / (R * dense_flop))     projections, router, dense MLP
      + roof(attn_bytes / (BW * attn_bw),     attn_flops / (R * attn_flop))       K/V reads, QK^T and PV
          x occupancy(attn_units, attn_par)
      + roof(expert_bytes / (BW * expert_bw), expert_flops / (R * expert_flop))   routed experts
          x occupancy(expert_units, expert_par)

where roof(m, c) = (m^p + c^p)^(1/p) is a roofline with partial overlap of memory and compute
(p = `overlap`: 1 adds them, large p is max(m, c); measured on the H100, a chunked iteration's
tile-padded expert FLOPs cost time although its expert reads take longer), occupancy(u, par) =
max(1, par / u) is the slowdown of a kernel whose call has u parallel work units where par are
needed to keep the device busy (the Pallas kernels run persistent grids of one CTA per SM: one
sequence's few attention tiles x KV heads, or a few experts' row tiles, leave most of the 132
SMs of an H200 idle; par = 0 turns the term off, as in tables fitted before it), and a call of n
layers costs call_s + the sum over its layers (+ range_row_s per row for a range step, whose
traced first layer XLA:CPU pays for per row: on this CPU a 1-layer range step of 500 rows costs
1.5x a layer of the whole-model step). A component's first `cache_bytes` move
`cache_speedup` times faster than the rest (data that stays in a cache: on the CPU, the
reference attention's per-row gathers of a small batch; 0 = no cache term). BW (bytes/s) and R (FLOP/s) are
the device's peaks (`Peaks`: the copy bandwidth and matmul rate measured on it, or a datasheet's);
the efficiencies (a read-only stream may beat a copy: up to 1.5) and the fixed times are fitted to timed calls (lp_jax.sim.fit). The work
of a call is a `LayerWork` per layer type (lp_jax.sim.work builds them from a plan). Because
every term is bytes / bandwidth or FLOPs / rate, a table for a device never run can be written
from its datasheet peaks and another device's efficiencies (and says so: `CostTable.provenance`).

Sampling: head_s + head_row_s * rows + roof(lm-head bytes / (BW * dense_bw), 2 rows V D / (R * dense_flop)).

Host, per iteration (the engine's own Python: scheduling, row building, bookkeeping): step_s +
decode_s * decode rows + prefill_s * prefill chunks; launch_s per executable call; readback_s
when the sampled tokens are read back. contention: device seconds lost per host second while both
are busy: 0 where they are separate chips (a GPU); on a CPU, whose XLA threads share the cores the
engine's Python runs on, measured at calibration (lp_jax.sim.contention).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import NamedTuple

TABLES_DIR = os.path.join(os.path.dirname(__file__), "tables")
FORMAT = 1
PROVENANCES = ("measured", "derived", "datasheet")


class LayerWork(NamedTuple):
    """The work of one layer of one call. rows: token rows the layer computes (the padded bucket);
    bytes in bytes, flops in FLOPs. (A NamedTuple: the simulator builds a few per iteration.)"""

    rows: float
    dense_bytes: float
    dense_flops: float
    attn_bytes: float
    attn_flops: float
    expert_bytes: float = 0.0
    expert_flops: float = 0.0
    attn_units: float = 0.0  # parallel units of the attention kernel: query tiles x KV heads (0: unknown)
    expert_units: float = 0.0  # row tiles the grouped matmuls compute (0: unknown)
    # K/V bytes of the attention kernel's longest work unit (one decode row's keys of one KV head
    # over its key splits): one CTA streams them, so the layer's attention lasts at least that.
    attn_longest_bytes: float = 0.0


@dataclass(frozen=True)
class Peaks:
    """copy_Bps: bytes/s (read + write of a large elementwise op); matmul_flops: FLOP/s of a large
    matmul in the table's dtype."""

    copy_Bps: float
    matmul_flops: float


@dataclass
class DeviceParams:
    """Fitted constants of the device side (seconds; efficiencies dimensionless, relative to the
    peaks; overlap: roof's p)."""

    call_s: float = 1e-4
    layer_s: float = 1e-5
    row_s: float = 0.0
    dense_bw: float = 0.5
    dense_flop: float = 0.5
    attn_bw: float = 0.5
    attn_flop: float = 0.5
    expert_bw: float = 0.5
    expert_flop: float = 0.5
    head_s: float = 1e-4
    head_row_s: float = 0.0
    overlap: float = 4.0
    cache_bytes: float = 0.0
    cache_speedup: float = 1.0
    range_row_s: float = 0.0
    attn_par: float = 0.0
    expert_par: float = 0.0
    # Seconds per call of the host's launches when calibration launches a grid point back to back
    # (what a launch-bound grid sample measures; lp_jax.sim.fit). Not used by the simulator, whose
    # host launches at HostParams.launch_s. 0: read as HostParams.launch_s.
    grid_launch_s: float = 0.0
    # Bytes/s one attention work unit streams on one CTA (its SM's share of the HBM bandwidth):
    # a layer's attention takes at least attn_longest_bytes / unit_bw. 0: no such bound. Fitted
    # on a traced serving run (lp_jax.bench.unit_bandwidth_fit), not on the grid, whose decodes share
    # one context.
    unit_bw: float = 0.0


def occupancy(units: float, par: float) -> float:
    """Slowdown of a call of `units` parallel work units on a device that needs `par` of them to
    be busy: max(1, par / units); 1 where either is unknown (0)."""
    return par / units if 0.0 < units < par else 1.0


@dataclass
class HostParams:
    """The host's seconds per iteration (see the module docstring)."""

    step_s: float = 1e-4
    decode_s: float = 1e-6
    prefill_s: float = 1e-5
    launch_s: float = 5e-5
    readback_s: float = 5e-5
    contention: float = 0.0


@dataclass
class CostTable:
    """Everything the simulator needs for one model on one device, and where it came from.

    provenance: "measured" (fitted to timed calls on that device), "derived" (fitted to other
    published measurements of that device, e.g. the committed H100 benchmark results) or
    "datasheet" (a device never run: peaks from its datasheet, efficiencies from another table).
    backend: the kernels the timed engine ran ("pallas" on Hopper, "reference" elsewhere), which
    decides what work a call does (see lp_jax.sim.work). memory_bytes: what JAX may use on the
    device (the KV pool is sized from it as on the real device). samples: the calibration points
    (their work and measured seconds), kept so that the fit error can be checked.
    """

    model: str
    device: str
    device_kind: str
    provenance: str
    backend: str
    dtype: str
    memory_bytes: int
    peaks: Peaks
    device_params: DeviceParams
    host: HostParams
    source: str
    date: str
    commit: str
    kernel_tiles_device: str | None = None  # device whose MoE tile table gives block_m (pallas)
    # Query tokens of one prefill tile of the attention kernel: a tile reads its visible keys once.
    # 64 in tables fitted before the kernel's own tile (16 on Hopper) was used.
    prefill_q_tile: int = 64
    # A measured all-reduce between this device's kind (lp_jax.parallel.collectives.AllReduceCost
    # as JSON: devices, latency_s, bus_Bps, samples); what a split (tp x ep > 1) engine pays after
    # attention and after the MoE of every layer. None: only tp = ep = 1 can be simulated.
    all_reduce: dict | None = None
    fit: dict = field(default_factory=dict)
    samples: list = field(default_factory=list)
    name: str = ""

    def __post_init__(self):
        if self.provenance not in PROVENANCES:
            raise ValueError(f"cost table provenance must be one of {', '.join(PROVENANCES)}, got {self.provenance!r}")
        if self.backend not in ("pallas", "reference"):
            raise ValueError(f"cost table backend must be pallas or reference, got {self.backend!r}")
        if not self.name:
            self.name = f"{self.device}/{self.model}"
        p = self.device_params
        self._dense = (self.peaks.copy_Bps * p.dense_bw, self.peaks.matmul_flops * p.dense_flop)
        self._attn = (self.peaks.copy_Bps * p.attn_bw, self.peaks.matmul_flops * p.attn_flop)
        self._expert = (self.peaks.copy_Bps * p.expert_bw, self.peaks.matmul_flops * p.expert_flop)

    @property
    def label(self) -> str:
        """What reports are stamped with: "simulated, cost table DEVICE/MODEL (provenance)"."""
        return f"simulated, cost table {self.name} ({self.provenance})"

    def all_reduce_cost(self, devices: int):
        """The table's measured all-reduce (an AllReduceCost); ValueError saying how to measure one
        when the table has none."""
        from lp_jax.parallel.collectives import AllReduceCost

        if not self.all_reduce:
            raise ValueError(f"cost table {self.name} has no measured all-reduce, so a tp x ep = {devices} engine "
                             "cannot be simulated on it: run scripts/measure_collectives.py --add-to-table TABLE "
                             "on that many devices of that kind")
        a = self.all_reduce
        return AllReduceCost(int(a["devices"]), float(a["latency_s"]), float(a["bus_Bps"]),
                             tuple(tuple(x) for x in a.get("samples", ())))

    # --- evaluation -------------------------------------------------------------------------
    def roof(self, memory_s: float, compute_s: float) -> float:
        """(m^p + c^p)^(1/p), p = overlap."""
        p = self.device_params.overlap
        return (memory_s ** p + compute_s ** p) ** (1.0 / p)

    def moved(self, nbytes: float) -> float:
        """Bytes at full bandwidth that `nbytes` cost: the first cache_bytes count 1 / cache_speedup."""
        p = self.device_params
        cached = min(nbytes, p.cache_bytes)
        return cached / p.cache_speedup + nbytes - cached

    def layer_s(self, w: LayerWork) -> float:
        """Seconds of one layer of a call doing `w`."""
        rows, dense_b, dense_f, attn_b, attn_f, expert_b, expert_f, attn_u, expert_u, longest_b = w
        p, roof, moved = self.device_params, self.roof, self.moved
        (db, df), (ab, af), (eb, ef) = self._dense, self._attn, self._expert
        attention = roof(moved(attn_b) / ab, attn_f / af) * occupancy(attn_u, p.attn_par)
        if p.unit_bw > 0.0 and longest_b / p.unit_bw > attention:
            attention = longest_b / p.unit_bw
        return (p.layer_s + p.row_s * rows + roof(moved(dense_b) / db, dense_f / df) + attention
                + roof(moved(expert_b) / eb, expert_f / ef) * occupancy(expert_u, p.expert_par))

    def call_s(self, layer_seconds: float, rows: int = 0, ranged: bool = False) -> float:
        """Seconds of one executable call of `rows` padded rows whose layers take `layer_seconds`
        in all; `ranged`: a range step (a traced first layer) rather than the whole model."""
        p = self.device_params
        return p.call_s + layer_seconds + (p.range_row_s * rows if ranged else 0.0)

    def head_s(self, rows: int, head_bytes: float, head_flops_per_row: float) -> float:
        """Seconds of the sampling call over `rows` (the padded sampled-row bucket)."""
        p = self.device_params
        db, df = self._dense
        return p.head_s + p.head_row_s * rows + self.roof(head_bytes / db, rows * head_flops_per_row / df)

    # --- files ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["format"] = FORMAT
        return d

    @staticmethod
    def from_json(d: dict) -> "CostTable":
        if d.get("format") != FORMAT:
            raise ValueError(f"cost table format {d.get('format')!r} is not {FORMAT}")
        d = {k: v for k, v in d.items() if k != "format"}
        return CostTable(**{**d, "peaks": Peaks(**d["peaks"]), "device_params": DeviceParams(**d["device_params"]),
                            "host": HostParams(**d["host"])})

    def save(self, path: str) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)
            f.write("\n")
        return path

    def with_params(self, **changes) -> "CostTable":
        """A copy with fields replaced (efficiency caches rebuilt)."""
        return dataclasses.replace(self, **changes)


def source_commit() -> str:
    """The short commit of this source tree (what a new table records): $LP_JAX_COMMIT where set
    (a copy of the tree without its .git, as on a lent GPU machine), else git's, else "unknown"."""
    if os.environ.get("LP_JAX_COMMIT"):
        return os.environ["LP_JAX_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_slug(kind: str, platform: str) -> str:
    """Short device name of a JAX device kind and platform ("NVIDIA H200" -> "h200"; CPUs -> "cpu"):
    the DEVICE of the tables' file names."""
    k = kind.lower()
    for name in ("h200", "h100", "b200", "a100"):
        if name in k:
            return name
    return "cpu" if platform == "cpu" else "".join(c for c in k if c.isalnum())[:16]


def table_file(device: str, model: str) -> str:
    return os.path.join(TABLES_DIR, f"{device}_{model}.json")


def available_tables() -> dict[tuple[str, str], str]:
    """{(device, model): path} of the committed tables."""
    out = {}
    if os.path.isdir(TABLES_DIR):
        for name in sorted(os.listdir(TABLES_DIR)):
            if name.endswith(".json") and "_" in name:
                device, model = name[:-5].split("_", 1)
                out[device, model] = os.path.join(TABLES_DIR, name)
    return out


# The device a bare "sim" picks for a model: the first of these with a table.
DEVICE_PREFERENCE = ("h200", "h100", "cpu")


def load_table(spec: str, model: str) -> CostTable:
    """The cost table named by `spec` for `model`: a device name (a committed table
    lp_jax/sim/tables/DEVICE_MODEL.json), "" (the preferred device with a table: DEVICE_PREFERENCE,
    measured tables first) or the path of a table file. ValueError listing what exists otherwise."""
    if spec.endswith(".json") or os.sep in spec:
        if not os.path.exists(spec):
            raise ValueError(f"no cost table file {spec}")
        with open(spec) as f:
            table = CostTable.from_json(json.load(f))
        if table.model != model:
            raise ValueError(f"cost table {spec} is for {table.model}, not {model}")
        return table
    tables = available_tables()
    have = sorted(d for d, m in tables if m == model)
    if not spec:
        if not have:
            raise ValueError(f"no cost table for {model}; tables exist for: "
                             f"{', '.join(sorted({m for _, m in tables})) or 'none'}")
        ranked = sorted(have, key=lambda d: (DEVICE_PREFERENCE.index(d) if d in DEVICE_PREFERENCE else 99, d))
        measured = [d for d in ranked if _provenance(tables[d, model]) != "datasheet"]
        spec = (measured or ranked)[0]
    if (spec, model) not in tables:
        raise ValueError(f"no cost table for {model} on {spec!r}; devices with a table for it: "
                         f"{', '.join(have) or 'none'} (lp-jax calibrate writes one)")
    with open(tables[spec, model]) as f:
        return CostTable.from_json(json.load(f))


def _provenance(path: str) -> str:
    with open(path) as f:
        return json.load(f).get("provenance", "")
