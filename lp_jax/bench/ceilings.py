"""The device's ceilings, measured in the run whose floors use them, beside its datasheet peaks.

Copy bandwidth (bytes read + written per second, bf16 arrays of `mib` MiB) by several methods,
the best one taken: a floor must not be lenient, and one method can fall short where another
reaches the memory's rate (the median of 10 XLA elementwise calls varied from 2.08 to 2.49 TB/s
between runs on one H100):
    xla_elementwise   a + 1, an XLA loop fusion (reads a, writes the result)
    xla_copy          a copied by XLA (device-to-device copy)
    torch_copy        dst.copy_(src) (cudaMemcpy device to device), where torch has a CUDA device
    torch_add         torch.add(src, 1, out=dst), where torch has a CUDA device
Matmul rate (bf16 FLOP/s, s x s x s): XLA's jnp.dot and torch's matmul (cuBLAS) where present.
Each method's figure is its fastest of `reps` timed runs after warm-up; a run goes through
`sets` distinct arrays back to back, so no call finds its input in L2 from the previous one. A
method that cannot run (no torch, no CUDA device, an error) is listed with the reason.

Datasheet peaks, keyed by JAX's device_kind (DATASHEET): H100 SXM 3.35 TB/s HBM3 and 989
TFLOP/s dense bf16; H200 4.8 TB/s and the same 989 TFLOP/s. On other devices the ratio to the
datasheet is "unknown".

`ceilings()` returns one flat dict (JSON as it stands): `<method>_copy_Bps` and
`<method>_matmul_flops` per method that ran, `copy_Bps` / `matmul_flops` the best with
`copy_method` / `matmul_method` naming it, `unavailable` {method: reason}, `device`,
`datasheet_copy_Bps` / `datasheet_matmul_flops` and `copy_Bps_over_datasheet` /
`matmul_flops_over_datasheet` (None where the device is not in DATASHEET); `summary(c)` is one
line of it. The engine bench and the kernel benches (scripts/kernel_ceilings.py) use these.
"""

from __future__ import annotations

import time
import traceback
from typing import Callable

import jax
import jax.numpy as jnp

# device_kind -> (HBM bandwidth B/s, dense bf16 tensor-core FLOP/s), from NVIDIA's datasheets.
DATASHEET: dict[str, tuple[float, float]] = {
    "NVIDIA H100 80GB HBM3": (3.35e12, 989e12),  # H100 SXM5
    "NVIDIA H200": (4.8e12, 989e12),
}


def time_s(fn, reps: int) -> float:
    """Fastest seconds of fn() (which returns something to block on) over `reps` calls, after
    three warm-up calls."""
    for _ in range(3):
        jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def _xla_sets(fn, arrays: list[tuple], reps: int) -> float:
    """Fastest seconds per fn(*arrays[i]) call: one jitted program over every set."""
    program = jax.jit(lambda sets: [fn(*s) for s in sets])
    return time_s(lambda: program(arrays), reps) / len(arrays)


def _bf16_vectors(n: int, sets: int) -> list[tuple]:
    return [(jax.random.normal(jax.random.key(i), (n,), jnp.bfloat16),) for i in range(sets)]


def xla_elementwise(n: int, reps: int, sets: int) -> float:
    xs = _bf16_vectors(n, sets)
    return 2 * 2 * n / _xla_sets(lambda a: a + jnp.bfloat16(1), xs, reps)


def xla_copy(n: int, reps: int, sets: int) -> float:
    xs = _bf16_vectors(n, sets)
    return 2 * 2 * n / _xla_sets(jnp.copy, xs, reps)


def xla_matmul(s: int, reps: int, sets: int) -> float:
    ab = [tuple(jax.random.normal(jax.random.key(100 + 2 * i + j), (s, s), jnp.bfloat16) for j in range(2))
          for i in range(sets)]
    return 2 * s**3 / _xla_sets(jnp.dot, ab, reps)


def _torch_cuda():
    """torch, where it is installed with a CUDA device; else RuntimeError saying which is missing."""
    try:
        import torch
    except ImportError:
        raise RuntimeError("torch is not installed") from None
    if not torch.cuda.is_available():
        raise RuntimeError("torch has no CUDA device")
    return torch


def _torch_sets(fn, sets: list[tuple], reps: int) -> float:
    """Fastest seconds per fn(*set) call, every set run back to back, after two warm-up runs."""
    torch = _torch_cuda()
    times = []
    for i in range(reps + 2):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for s in sets:
            fn(*s)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times[2:]) / len(sets)


def _sets_that_fit(bytes_per_set: int, sets: int) -> int:
    """As many of `sets` as fit 80% of the memory torch can still get: JAX preallocates most of
    the GPU (XLA_PYTHON_CLIENT_MEM_FRACTION) when its backend starts, so torch's methods run in
    what is left, with fewer sets of arrays (at hundreds of MiB an array, far beyond L2, one set
    measures as well). RuntimeError when not even one fits."""
    torch = _torch_cuda()
    free, _ = torch.cuda.mem_get_info()
    fit = min(sets, int(0.8 * free) // bytes_per_set)
    if fit < 1:
        raise RuntimeError(f"torch can allocate {free / 2**30:.2f} GiB beside JAX's preallocation, less than one "
                           f"set of {bytes_per_set / 2**30:.2f} GiB (lower XLA_PYTHON_CLIENT_MEM_FRACTION to run it)")
    return fit


def _torch_pairs(n: int, sets: int) -> list[tuple]:
    torch = _torch_cuda()
    return [(torch.randn(n, device="cuda", dtype=torch.bfloat16), torch.empty(n, device="cuda", dtype=torch.bfloat16))
            for _ in range(_sets_that_fit(2 * 2 * n, sets))]


def torch_copy(n: int, reps: int, sets: int) -> float:
    return 2 * 2 * n / _torch_sets(lambda src, dst: dst.copy_(src), _torch_pairs(n, sets), reps)


def torch_add(n: int, reps: int, sets: int) -> float:
    torch = _torch_cuda()
    return 2 * 2 * n / _torch_sets(lambda src, dst: torch.add(src, 1, out=dst), _torch_pairs(n, sets), reps)


def torch_matmul(s: int, reps: int, sets: int) -> float:
    torch = _torch_cuda()
    ab = [(torch.randn(s, s, device="cuda", dtype=torch.bfloat16), torch.randn(s, s, device="cuda",
                                                                                dtype=torch.bfloat16))
          for _ in range(_sets_that_fit(3 * 2 * s * s, sets))]
    return 2 * s**3 / _torch_sets(torch.matmul, ab, reps)


# name -> method(size, reps, sets) -> B/s (copy: size = bf16 elements) or FLOP/s (matmul: size = s).
COPY_METHODS: dict[str, Callable[[int, int, int], float]] = dict(
    xla_elementwise=xla_elementwise, xla_copy=xla_copy, torch_copy=torch_copy, torch_add=torch_add)
MATMUL_METHODS: dict[str, Callable[[int, int, int], float]] = dict(xla_matmul=xla_matmul, torch_matmul=torch_matmul)


def datasheet(device_kind: str) -> dict:
    """{datasheet_copy_Bps, datasheet_matmul_flops} of a device (None each where unknown)."""
    copy, matmul = DATASHEET.get(device_kind, (None, None))
    return dict(datasheet_copy_Bps=copy, datasheet_matmul_flops=matmul)


def _best(kind: str, methods: dict, size: int, reps: int, sets: int, out: dict) -> None:
    figures = {}
    for name, method in methods.items():
        try:
            figures[name] = out[f"{name}_{kind}"] = float(method(size, reps, sets))
        except Exception as e:  # noqa: BLE001 - the other methods' figures still stand
            if not isinstance(e, RuntimeError) or "torch" not in str(e):
                traceback.print_exc()
            out["unavailable"][name] = f"{type(e).__name__}: {str(e)[:200]}"
        finally:
            if "torch" in name:
                _free_torch_cache()
    if not figures:
        raise RuntimeError(f"no {kind} method ran: {out['unavailable']}")
    best = max(figures, key=figures.get)
    out[kind], out[kind.split("_")[0] + "_method"] = figures[best], best


def _free_torch_cache() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def ceilings(mib: int = 512, s: int = 8192, reps: int = 20, sets: int = 4, device_kind: str | None = None,
             copy_methods: dict | None = None, matmul_methods: dict | None = None) -> dict:
    """The ceilings of the default device (see the module docstring for the keys). mib: MiB per
    copied array; s: matmul size; device_kind: the datasheet entry (default the device's)."""
    out: dict = {"unavailable": {}}
    _best("copy_Bps", COPY_METHODS if copy_methods is None else copy_methods, mib * 2**20 // 2, reps, sets, out)
    _best("matmul_flops", MATMUL_METHODS if matmul_methods is None else matmul_methods, s, reps, sets, out)
    out["device"] = device_kind or jax.devices()[0].device_kind
    return with_datasheet(out)


def with_datasheet(c: dict) -> dict:
    """c (measured figures and its `device`) with the datasheet peaks and ratios added."""
    c = dict(c, **datasheet(c["device"]))
    for kind in ("copy_Bps", "matmul_flops"):
        peak = c[f"datasheet_{kind}"]
        c[f"{kind}_over_datasheet"] = c[kind] / peak if peak else None
    return c


def ratio_text(c: dict, kind: str) -> str:
    """"87% of the datasheet's 3.35 TB/s" or "datasheet unknown" (kind: copy_Bps or matmul_flops)."""
    ratio, peak = c.get(f"{kind}_over_datasheet"), c.get(f"datasheet_{kind}")
    if not ratio:
        return "datasheet unknown"
    unit = f"{peak / 1e12:.3g} TB/s" if kind == "copy_Bps" else f"{peak / 1e12:.0f} TFLOP/s"
    return f"{100 * ratio:.0f}% of the datasheet's {unit}"


def summary(c: dict) -> str:
    """One line: the best figures, their methods, every method's figure and the datasheet ratios."""
    def listed(kind: str, unit: str, digits: int) -> str:
        figures = ", ".join(f"{k.removesuffix('_' + kind)} {v / 1e12:.{digits}f}" for k, v in c.items()
                            if k.endswith("_" + kind) and not k.startswith("datasheet") and k != kind)
        return f"; {unit} by method: {figures}" if figures else ""

    unavailable = c.get("unavailable") or {}  # absent from figures written by hand or before it existed
    missing = "; not run: " + ", ".join(f"{k} ({v})" for k, v in unavailable.items()) if unavailable else ""
    return (f"{c['device']}: copy {c['copy_Bps'] / 1e12:.3f} TB/s read + write ({c['copy_method']}, "
            f"{ratio_text(c, 'copy_Bps')}{listed('copy_Bps', 'TB/s', 3)}), bf16 matmul "
            f"{c['matmul_flops'] / 1e12:.1f} TFLOP/s ({c['matmul_method']}, {ratio_text(c, 'matmul_flops')}"
            f"{listed('matmul_flops', 'TFLOP/s', 1)}){missing}")
