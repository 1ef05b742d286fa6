"""Which tile-table entry serves a device: its own, then the nearest tuned Hopper's, then defaults."""

import dataclasses
import json

import pytest

from pallas_kernels import attention_tuning, moe_tuning
from pallas_kernels.grouped_matmul import TileConfig
from pallas_kernels.moe_tuning import MoETileConfig
from pallas_kernels.tile_tables import TileTable, hopper_neighbours, is_hopper, rows_bucket

H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
QWEN3 = (128, 2048, 768)


def moe_cfg(block_n: int) -> MoETileConfig:
    """A distinguishable config (block_n marks which entry served)."""
    return MoETileConfig(TileConfig(16, block_n, swap=True, num_compute_wgs=1),
                         TileConfig(16, 128, swap=True, num_compute_wgs=1))


def entry(device, rows_bucket, block_n, shape=QWEN3):
    cfg = moe_cfg(block_n)
    E, D, F = shape
    return dict(E=E, D=D, F=F, rows_bucket=rows_bucket, device=device,
                gate_up=dataclasses.asdict(cfg.gate_up), down=dataclasses.asdict(cfg.down))


def table_of(tmp_path, entries) -> TileTable:
    path = tmp_path / "moe_tiles.json"
    path.write_text(json.dumps(entries))
    return moe_tuning.load_table(str(path))


def test_own_entries_first(tmp_path):
    table = table_of(tmp_path, [entry(H100, 8, 64), entry(H200, 8, 128)])
    choice = moe_tuning.choose(*QWEN3, 8, H200, table)
    assert (choice.source, choice.table_device, choice.config) == ("tuned", H200, moe_cfg(128))
    assert choice.describe() == "H200 table (tuned here) for NVIDIA H200"


def test_untuned_hopper_takes_nearest_tuned_hopper(tmp_path):
    table = table_of(tmp_path, [entry(H100, 8, 64), entry(H100, 512, 192), entry("NVIDIA H100 PCIe", 8, 128)])
    choice = moe_tuning.choose(*QWEN3, 6, H200, table)
    # the 80GB part has the H200's 132 SMs; the PCIe part has 114
    assert (choice.source, choice.table_device, choice.rows_bucket) == ("nearest_hopper", H100, 8)
    assert choice.config == moe_cfg(64)
    assert choice.describe() == "H100 table (nearest tuned Hopper) for NVIDIA H200"
    assert moe_tuning.choose(*QWEN3, 300, H200, table).config == moe_cfg(192)  # nearest bucket: 512
    assert table.describe_device(H200) == "H100 table (nearest tuned Hopper) for NVIDIA H200"


def test_nearest_by_sm_count_then_bandwidth():
    tuned = [H100, "NVIDIA H100 NVL", "NVIDIA H100 PCIe", "NVIDIA H20"]
    # all but PCIe and H20 have 132 SMs; NVL's 3.9 TB/s is nearer the H200's 4.8 than 3.35
    assert hopper_neighbours(H200, tuned) == ["NVIDIA H100 NVL", H100, "NVIDIA H100 PCIe", "NVIDIA H20"]
    assert hopper_neighbours(H100, tuned)[0] == "NVIDIA H100 NVL"  # never itself
    assert hopper_neighbours("NVIDIA A100-SXM4-80GB", tuned) == []


def test_per_shape_fallback(tmp_path):
    """The H200 has its own entry for one shape only: the other shape falls back to the H100's."""
    gpt_oss = (32, 2880, 2880)
    table = table_of(tmp_path, [entry(H200, 8, 128), entry(H100, 8, 64), entry(H100, 4, 192, gpt_oss)])
    assert moe_tuning.choose(*QWEN3, 8, H200, table).source == "tuned"
    choice = moe_tuning.choose(*gpt_oss, 4, H200, table)
    assert (choice.source, choice.config) == ("nearest_hopper", moe_cfg(192))


@pytest.mark.parametrize("device", ["NVIDIA A100-SXM4-80GB", "cpu", "NVIDIA B200"])
def test_non_hopper_gets_defaults(tmp_path, device):
    table = table_of(tmp_path, [entry(H100, 8, 64)])
    choice = moe_tuning.choose(*QWEN3, 8, device, table)
    assert choice.source == "default" and choice.config == moe_tuning.default_config(*QWEN3, 8)
    assert choice.describe().startswith("default_config")
    assert not is_hopper(device)


def test_untuned_shape_on_tuned_device_gets_defaults(tmp_path):
    table = table_of(tmp_path, [entry(H100, 8, 64)])
    assert moe_tuning.choose(64, 1024, 512, 8, H100, table).source == "default"
    assert moe_tuning.choose(64, 1024, 512, 8, H200, table).source == "default"


def test_missing_table_file_gives_defaults(tmp_path):
    table = moe_tuning.load_table(str(tmp_path / "absent.json"))
    assert moe_tuning.choose(*QWEN3, 8, H100, table).source == "default"


def test_package_tables_serve_the_h200_from_the_h100():
    """Until H200 entries are committed, both model shapes on the H200 use the H100's entries."""
    for E, K, D, F in [(128, 8, 2048, 768), (32, 4, 2880, 2880)]:
        for T in (1, 64, 16384):
            want = moe_tuning.choose(E, D, F, T * K, H100)
            got = moe_tuning.choose(E, D, F, T * K, H200)
            assert want.source == "tuned"
            if got.source == "nearest_hopper":
                assert got.config == want.config and got.table_device == H100
            else:  # H200 entries for this shape have been committed
                assert got.source == "tuned"
    for T, B in [(64, 65), (8192, 2)]:
        want = attention_tuning.choose(32, 4, 128, T, B, H100)
        got = attention_tuning.choose(32, 4, 128, T, B, H200)
        assert want.source == "tuned" and got.source in ("tuned", "nearest_hopper")
        if got.source == "nearest_hopper":
            assert got.config == want.config


def test_rows_bucket():
    assert [rows_bucket(r) for r in (0, 1, 2, 3, 8, 9, 1000)] == [1, 1, 2, 4, 8, 16, 1024]


def test_tile_tables_report_for_records():
    from pallas_kernels.dispatch import tile_tables_report
    report = tile_tables_report("NVIDIA H200")
    assert set(report) == {"moe", "attention"}
    assert all(v in ("H100 table (nearest tuned Hopper) for NVIDIA H200", "H200 table (tuned here) for NVIDIA H200")
               for v in report.values())
    assert tile_tables_report()["moe"].startswith("default_config")  # the CPU: no Hopper table
