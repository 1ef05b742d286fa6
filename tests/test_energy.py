"""Energy meter: a clean reason on the CPU; joules from a fake NVML counter on fake GPUs."""

import sys
import types
from dataclasses import dataclass

import jax
import pytest

from lp_jax.bench.energy import EnergyMeter, energy_fields


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


class StandInGpu:
    """A GPU's energy counter on a virtual clock: `watts(t)` integrated, in millijoules."""

    def __init__(self, watts):
        self.t, self.mj, self.watts = 0.0, 0.0, watts

    def advance(self, seconds: float, steps: int = 1000) -> None:
        dt = seconds / steps
        for _ in range(steps):
            self.mj += 1e3 * self.watts(self.t) * dt
            self.t += dt


def test_idle_power_measured_before_the_window_is_subtracted():
    # 60 W at rest, 360 W while serving (from t = 3 s, where the idle window ends).
    gpu = StandInGpu(lambda t: 60.0 if t < 3.0 else 360.0)
    meter = EnergyMeter([], counter=lambda: gpu.mj, names=["stand-in"], clock=lambda: gpu.t, sleep=gpu.advance)
    assert meter.measure_idle(3.0) == pytest.approx(60.0)
    meter.start()
    gpu.advance(10.0)  # the measured window: 10 s at 360 W
    reading = meter.stop()
    assert reading.joules == pytest.approx(3600.0) and reading.window_s == pytest.approx(10.0)
    assert reading.idle_watts == pytest.approx(60.0) and reading.idle_joules == pytest.approx(600.0)
    assert reading.joules_above_idle == pytest.approx(3000.0)
    fields = energy_fields(reading, tokens=1000, output_tokens=250)
    assert fields["energy_mj_per_token"] == pytest.approx(3600.0) and fields["energy_mj_per_output_token"] == \
        pytest.approx(14400.0)
    assert fields["energy_mj_per_token_above_idle"] == pytest.approx(3000.0)
    assert fields["energy_mj_per_output_token_above_idle"] == pytest.approx(12000.0)
    assert fields["energy_idle_w"] == pytest.approx(60.0) and fields["energy_above_idle_j"] == pytest.approx(3000.0)


def test_without_an_idle_window_only_the_raw_figure_is_given():
    gpu = StandInGpu(lambda t: 100.0)
    meter = EnergyMeter([], counter=lambda: gpu.mj, clock=lambda: gpu.t, sleep=gpu.advance)
    meter.start()
    gpu.advance(2.0)
    fields = energy_fields(meter.stop(), tokens=10, output_tokens=5)
    assert fields["energy_j"] == pytest.approx(200.0) and fields["energy_mj_per_token"] == pytest.approx(2e4)
    assert fields["energy_above_idle_j"] is None and fields["energy_mj_per_token_above_idle"] is None


def test_no_idle_wait_where_energy_cannot_be_measured():
    slept = []
    meter = EnergyMeter(jax.devices("cpu")[:1], sleep=slept.append)
    assert meter.measure_idle(3.0) is None and slept == []  # a CPU run is not slowed down for nothing
    fields = energy_fields(meter.stop(), 10, 5)
    assert fields["energy_j"] is None and fields["energy_mj_per_token_above_idle"] is None
