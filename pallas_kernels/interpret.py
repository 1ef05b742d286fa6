"""Mosaic GPU kernels on the CPU (jax's GPU interpret mode) without starving XLA's CPU threads.

Why this exists: jax's GPU interpreter runs the warpgroups of a CTA (CTAs of the grid one after
another) as host threads; each thread executes its own XLA CPU program, and every barrier wait is
a Python callback that blocks until the other warpgroups arrive. XLA's CPU runtime runs a thunk
that becomes ready beside another (callbacks included) on its intra-op pool (threads named
tf_XLAEigen), and the interpreter's own callback in the calling program holds one pool thread
while the kernel runs. So a kernel of W warpgroups can hold up to W + 1 pool threads blocked at
once, and a pool with fewer threads leaves a warpgroup's callback queued behind threads that wait
for it: the process hangs for good (seen on 2 cores, and at once on 1). XLA gives that pool one
thread per schedulable core, or NPROC threads when the NPROC environment variable is set, read
once, when the CPU backend starts.
"""

import contextlib
import os

from jax._src import xla_bridge  # jax 0.11.2 has no public "has the backend started?"
from jax.experimental.pallas import mosaic_gpu as plgpu

# XLA CPU threads the interpreter needs: more than the most warpgroups a kernel here runs per CTA
# (num_compute_wgs + 1 <= 3, no clusters) plus the calling callback, with room to spare.
INTERPRET_CPU_THREADS = 8


def _cpu_threads_now() -> int:
    """The size XLA gives (or gave) its CPU pools: NPROC when set, else the schedulable cores."""
    nproc = os.environ.get("NPROC", "")
    return int(nproc) if nproc.isdigit() else len(os.sched_getaffinity(0))


def reserve_interpret_threads():
    """Make XLA's CPU pools big enough for GPU interpret mode: raise NPROC to
    INTERPRET_CPU_THREADS before the CPU backend starts (a machine with more cores keeps its
    size). Once the backend has started its pools are fixed: then raise RuntimeError if they are
    too small, since running a kernel could hang."""
    if _cpu_threads_now() >= INTERPRET_CPU_THREADS:
        return
    if not xla_bridge.backends_are_initialized():
        os.environ["NPROC"] = str(INTERPRET_CPU_THREADS)
        return
    raise RuntimeError(
        f"GPU interpret mode needs {INTERPRET_CPU_THREADS} XLA CPU threads but JAX started its CPU "
        f"backend with {_cpu_threads_now()}, so a warp-specialised kernel could hang. Call "
        "pallas_kernels.interpret.reserve_interpret_threads() before the first JAX computation, "
        f"or set NPROC={INTERPRET_CPU_THREADS} in the environment.")


@contextlib.contextmanager
def gpu_interpret_mode():
    """plgpu.force_gpu_interpret_mode() after reserve_interpret_threads(): kernels traced inside
    run on the CPU. Every CPU use of the kernels goes through here."""
    reserve_interpret_threads()
    with plgpu.force_gpu_interpret_mode():
        yield
