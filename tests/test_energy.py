"""Energy meter: a clean reason on the CPU; joules from a fake NVML counter on fake GPUs."""

import sys
import types
from dataclasses import dataclass

import jax
import pytest

from lp_jax.bench.energy import EnergyMeter


def test_cpu_says_why_there_is_no_energy():
    meter = EnergyMeter(jax.devices("cpu")[:1])
    meter.start()
    reading = meter.stop()
    assert reading.joules is None and "cpu" in reading.reason and "not an NVIDIA GPU" in reading.reason


@dataclass
class FakeGpu:
    id: int
    platform: str = "gpu"


def _fake_pynvml(counters_mj: dict[int, list[int]], supported: bool = True):
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nvml.NVMLError = NVMLError
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetName = lambda h: f"Fake H100 #{h}"

    def energy(h):
        if not supported:
            raise NVMLError("Not Supported")
        return counters_mj[h].pop(0)

    nvml.nvmlDeviceGetTotalEnergyConsumption = energy
    return nvml


def test_joules_from_the_counter_of_the_visible_gpu(monkeypatch):
    # JAX device 0 is physical GPU 3 here; reads: probe, start, stop (millijoules).
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml({3: [1_000, 5_000, 47_500]}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    meter = EnergyMeter([FakeGpu(0)])
    meter.start()
    reading = meter.stop()
    assert reading.joules == pytest.approx(42.5) and reading.reason is None
    assert reading.devices == ["Fake H100 #3"]


def test_unsupported_counter_and_missing_bindings(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml({}, supported=False))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    reading = EnergyMeter([FakeGpu(0)]).stop()
    assert reading.joules is None and "Not Supported" in reading.reason
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert "not installed" in EnergyMeter([FakeGpu(0)]).stop().reason
