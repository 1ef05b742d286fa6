"""Ceilings: the best of several methods, every method's figure or its reason, and the ratio to
the datasheet keyed by device name ("unknown" elsewhere). Host only, except one tiny real run."""

import pytest

from lp_jax.bench.ceilings import DATASHEET, ceilings, ratio_text, summary, with_datasheet


def _fail(size, reps, sets):
    raise RuntimeError("torch is not installed")


def test_the_best_method_is_taken_and_the_others_are_kept():
    c = ceilings(1, 8, reps=1, device_kind="NVIDIA H100 80GB HBM3",
                 copy_methods=dict(slow=lambda *a: 2.0e12, fast=lambda *a: 3.1e12, missing=_fail),
                 matmul_methods=dict(xla=lambda *a: 700e12, cublas=lambda *a: 800e12))
    assert (c["copy_Bps"], c["copy_method"]) == (3.1e12, "fast") and c["slow_copy_Bps"] == 2.0e12
    assert (c["matmul_flops"], c["matmul_method"]) == (800e12, "cublas") and c["xla_matmul_flops"] == 700e12
    assert c["unavailable"] == {"missing": "RuntimeError: torch is not installed"}
    assert c["datasheet_copy_Bps"] == 3.35e12 and c["datasheet_matmul_flops"] == 989e12
    assert c["copy_Bps_over_datasheet"] == pytest.approx(3.1 / 3.35)
    assert c["matmul_flops_over_datasheet"] == pytest.approx(800 / 989)
    line = summary(c)
    assert "copy 3.100 TB/s read + write (fast, 93% of the datasheet's 3.35 TB/s" in line
    assert "slow 2.000" in line and "81% of the datasheet's 989 TFLOP/s" in line and "not run: missing" in line


def test_datasheet_peaks_by_device_name_and_unknown_elsewhere():
    assert DATASHEET["NVIDIA H200"] == (4.8e12, 989e12)
    h200 = with_datasheet(dict(device="NVIDIA H200", copy_Bps=4.2e12, matmul_flops=900e12))
    assert h200["copy_Bps_over_datasheet"] == pytest.approx(0.875)
    cpu = with_datasheet(dict(device="cpu", copy_Bps=1e10, matmul_flops=1e11))
    assert cpu["datasheet_copy_Bps"] is None and cpu["copy_Bps_over_datasheet"] is None
    assert ratio_text(cpu, "copy_Bps") == "datasheet unknown"


def test_no_method_at_all_is_an_error_not_a_zero_floor():
    with pytest.raises(RuntimeError, match="no copy_Bps method ran"):
        ceilings(1, 8, reps=1, copy_methods=dict(a=_fail))


def test_real_methods_on_this_machine():
    c = ceilings(1, 64, reps=2, sets=2)
    assert c["xla_elementwise_copy_Bps"] > 0 and c["xla_copy_copy_Bps"] > 0 and c["xla_matmul_matmul_flops"] > 0
    assert c["copy_Bps"] == max(c["xla_elementwise_copy_Bps"], c["xla_copy_copy_Bps"], c.get("torch_copy_copy_Bps", 0),
                                c.get("torch_add_copy_Bps", 0))
