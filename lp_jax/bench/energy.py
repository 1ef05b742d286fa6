"""GPU energy over a measured window, from NVML's total-energy counter, with the idle power
measured in the same run and subtracted.

`nvmlDeviceGetTotalEnergyConsumption` counts millijoules since the driver loaded (Volta and
newer); the energy of a window is the difference of two readings, summed over the GPUs the
engine uses. Where that cannot be measured (no NVIDIA GPU in use, pynvml missing, NVML or the
counter unavailable) the reading carries `joules=None` and a `reason` a person can act on.

A GPU at rest still draws power (static power, memory refresh, fans of the board): tens of
watts of an H100's ~700 W. So a run's energy is reported twice: raw, and above idle, where the
idle power is measured over a short window just before the measured one (the engine loaded,
nothing in flight: `measure_idle`) and idle power x window length is subtracted. The figure
above idle is what the schedule's work cost; the raw one is what the machine drew.

JAX device i is taken to be NVML device CUDA_VISIBLE_DEVICES[i] (or i when unset), which holds
when CUDA enumerates in PCI bus order, as it does on machines of identical GPUs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

# Seconds of idle before each measured window: NVML's counter moves in steps of tens of ms, so a
# few seconds give the idle power to about 1%.
IDLE_WINDOW_S = 3.0


@dataclass(frozen=True)
class EnergyReading:
    """Energy of the window in joules (None when not measured, with the reason why), the names
    of the GPUs it covers, the window's length (s) and the idle power (W) measured before it
    (None when no idle window was measured)."""

    joules: float | None
    reason: str | None = None
    devices: list[str] = field(default_factory=list)
    window_s: float | None = None
    idle_watts: float | None = None

    @property
    def idle_joules(self) -> float | None:
        """What the GPUs would have drawn at rest over the window."""
        if self.joules is None or self.idle_watts is None or self.window_s is None:
            return None
        return self.idle_watts * self.window_s

    @property
    def joules_above_idle(self) -> float | None:
        idle = self.idle_joules
        return None if idle is None else self.joules - idle


class EnergyMeter:
    """[`measure_idle(seconds)`,] `start()`, then `stop() -> EnergyReading`. `devices` are the
    JAX devices the engine runs on. `counter` (millijoules so far, summed over the GPUs) stands
    in for NVML where given (tests); `clock` and `sleep` are the seconds the windows are timed
    and waited with."""

    def __init__(self, devices, counter: Callable[[], float] | None = None, names: list[str] | None = None,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep):
        self._handles, self._names, self._start = [], list(names or []), None
        self._clock, self._sleep, self._idle_watts = clock, sleep, None
        if counter is not None:
            self._read_mj, self._reason = counter, None
        else:
            self._reason = self._open(list(devices))

    @property
    def available(self) -> bool:
        return self._reason is None

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

    def _read_mj(self) -> float:
        import pynvml

        return sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles)

    def _reading(self) -> tuple[float, float]:
        """(seconds, millijoules) now."""
        return self._clock(), self._read_mj()

    def measure_idle(self, seconds: float = IDLE_WINDOW_S) -> float | None:
        """Wait `seconds` with nothing running and keep the power drawn (W) for `stop`'s reading;
        None (and no waiting) where energy cannot be measured. Call it with the engine idle."""
        if not self.available:
            return None
        (t0, e0) = self._reading()
        self._sleep(seconds)
        (t1, e1) = self._reading()
        self._idle_watts = (e1 - e0) / 1e3 / (t1 - t0) if t1 > t0 else None
        return self._idle_watts

    def start(self) -> None:
        if self.available:
            self._start = self._reading()

    def stop(self) -> EnergyReading:
        if not self.available:
            return EnergyReading(None, self._reason)
        if self._start is None:
            raise RuntimeError("EnergyMeter.stop() before start()")
        (t0, e0), (t1, e1) = self._start, self._reading()
        return EnergyReading((e1 - e0) / 1e3, None, list(self._names), t1 - t0, self._idle_watts)


def energy_fields(energy: EnergyReading, tokens: int, output_tokens: int) -> dict:
    """summary.json's energy keys: joules raw and above idle, the idle power and the window, and
    millijoules per token (prompt + output) and per output token, raw and above idle (None where
    not measured or no tokens)."""
    def per_mj(joules, n):
        return joules * 1e3 / n if joules is not None and n else None

    above = energy.joules_above_idle
    return dict(
        energy_j=energy.joules,
        energy_above_idle_j=above,
        energy_idle_w=energy.idle_watts,
        energy_window_s=energy.window_s,
        energy_mj_per_token=per_mj(energy.joules, tokens),
        energy_mj_per_output_token=per_mj(energy.joules, output_tokens),
        energy_mj_per_token_above_idle=per_mj(above, tokens),
        energy_mj_per_output_token_above_idle=per_mj(above, output_tokens),
        energy_reason=energy.reason,
        energy_devices=energy.devices,
    )


class SimulatedEnergy:
    """The meter of a simulated run: the cost model has no power model, so nothing is measured."""

    def measure_idle(self, seconds: float = IDLE_WINDOW_S) -> None:
        """No idle window: there is no power to measure (and no time to wait on a virtual clock)."""

    def start(self) -> None:
        pass

    def stop(self) -> EnergyReading:
        return EnergyReading(None, "simulated run: the cost model does not model energy")
