"""GPU energy over a measured window, from NVML's total-energy counter.

`nvmlDeviceGetTotalEnergyConsumption` counts millijoules since the driver loaded (Volta and
newer); the energy of a window is the difference of two readings, summed over the GPUs the
engine uses. Where that cannot be measured (no NVIDIA GPU in use, pynvml missing, NVML or the
counter unavailable) the reading carries `joules=None` and a `reason` a person can act on.

JAX device i is taken to be NVML device CUDA_VISIBLE_DEVICES[i] (or i when unset), which holds
when CUDA enumerates in PCI bus order, as it does on machines of identical GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EnergyReading:
    """Energy of the window in joules (None when not measured, with the reason why) and the
    names of the GPUs it covers."""

    joules: float | None
    reason: str | None = None
    devices: list[str] = field(default_factory=list)


class EnergyMeter:
    """`start()` then `stop() -> EnergyReading`. `devices` are the JAX devices the engine runs on."""

    def __init__(self, devices):
        self._handles, self._names, self._start_mj = [], [], None
        self._reason = self._open(list(devices))

    def _open(self, devices) -> str | None:
        platforms = {d.platform for d in devices}
        if platforms != {"gpu"}:
            return f"the engine runs on {', '.join(sorted(platforms))}, not an NVIDIA GPU: no GPU energy to measure"
        try:
            import pynvml
        except ImportError:
            return "pynvml (the nvidia-ml-py package) is not installed"
        try:
            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            physical = [int(x) for x in visible.split(",")] if visible.replace(",", "").isdigit() else None
            for d in devices:
                index = physical[d.id] if physical else d.id
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # fails early if unsupported
                self._handles.append(handle)
                self._names.append(str(pynvml.nvmlDeviceGetName(handle)))
        except (pynvml.NVMLError, IndexError) as e:
            return f"NVML cannot read the energy counter: {e}"
        return None

    def _read_mj(self) -> int:
        import pynvml

        return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles)

    def start(self) -> None:
        if self._reason is None:
            self._start_mj = self._read_mj()

    def stop(self) -> EnergyReading:
        if self._reason is not None:
            return EnergyReading(None, self._reason)
        if self._start_mj is None:
            raise RuntimeError("EnergyMeter.stop() before start()")
        return EnergyReading((self._read_mj() - self._start_mj) / 1e3, None, list(self._names))
