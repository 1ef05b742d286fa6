"""max_num_batched_tokens split by meaning: max_prefill_tokens (prefill_first's prefill tokens per
iteration), max_cohort_tokens (layered's cohort cap), and the hidden buffer derived from both in
EngineConfig.hidden_rows. The old name is refused wherever an engine option can be given. Host only."""

from __future__ import annotations

import pytest

import lp_jax
from lp_jax.cli import main
from lp_jax.engine.config import SCHEDULES, EngineConfig
from lp_jax.engine.kv_cache import BlockManager
from lp_jax.engine.request import Request, SamplingParams
from lp_jax.engine.scheduler import SchedulerState, make_scheduler

REPLACEMENTS = r"max_num_batched_tokens was split in two: max_prefill_tokens .* and max_cohort_tokens"


def test_engine_config_refuses_the_old_name_naming_the_new_fields():
    with pytest.raises(ValueError, match=REPLACEMENTS):
        EngineConfig(schedule="layered", max_num_batched_tokens=512)


def test_llm_refuses_the_old_name_before_building_anything():
    with pytest.raises(ValueError, match=REPLACEMENTS):
        lp_jax.LLM("tiny-qwen3-moe", "layered", max_num_batched_tokens=512)


@pytest.mark.parametrize("where", [["-o", "max_num_batched_tokens=512"],
                                   ["--schedule", "layered:max_num_batched_tokens=512"]])
def test_cli_refuses_the_old_name_naming_the_new_fields(where, capsys, tmp_path):
    assert main(["bench", "--no-progress", "--out", str(tmp_path), *where]) == 2
    err = capsys.readouterr().err
    assert "max_prefill_tokens" in err and "max_cohort_tokens" in err


def test_new_fields_are_checked_like_the_others():
    for name in ("max_prefill_tokens", "max_cohort_tokens"):
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got 0"):
            EngineConfig(**{name: 0})


def test_defaults_keep_one_hidden_buffer_for_every_schedule():
    """64 decode rows + 8192 prefill rows + the trash row, whatever the schedule, so engines that
    differ only in schedule still share executables."""
    assert {EngineConfig(schedule=s).hidden_rows() for s in SCHEDULES} == {64 + 8192 + 1}
    # The prefill region holds the largest prefill of any schedule.
    assert EngineConfig(max_prefill_tokens=100, max_cohort_tokens=300, token_budget=200).hidden_rows() == 64 + 300 + 1
    assert EngineConfig(max_prefill_tokens=400, max_cohort_tokens=300, token_budget=200).hidden_rows() == 64 + 400 + 1
    assert EngineConfig(max_prefill_tokens=100, max_cohort_tokens=100, token_budget=200).hidden_rows() == 64 + 200 + 1


def _first_prefill_tokens(schedule: str, **options) -> int:
    """Prompt tokens the first iteration prefills of four waiting 100-token prompts."""
    config = EngineConfig(schedule=schedule, max_num_seqs=8, **options)
    state = SchedulerState(config, num_layers=4, blocks=BlockManager(64, config.page_size))
    state.waiting.extend(Request(i, [1] * 100, SamplingParams(), 0.0, i) for i in range(4))
    return make_scheduler(schedule).schedule(state).prefill_tokens


def test_each_cap_limits_its_own_schedule_only():
    assert _first_prefill_tokens("prefill_first", max_prefill_tokens=250, max_cohort_tokens=8192) == 200
    assert _first_prefill_tokens("prefill_first", max_prefill_tokens=8192, max_cohort_tokens=150) == 400
    assert _first_prefill_tokens("layered", max_cohort_tokens=150, max_prefill_tokens=8192) == 100
    assert _first_prefill_tokens("layered", max_cohort_tokens=8192, max_prefill_tokens=150) == 400


REFUSALS = [
    (dict(max_model_len=0), r"max_model_len must be an integer >= 1 or None, got 0"),
    (dict(max_model_len=-5), r"max_model_len must be an integer >= 1 or None, got -5"),
    (dict(page_size=0), r"page_size must be an integer >= 1, got 0"),
    (dict(page_size=16.0), r"page_size must be an integer >= 1, got 16.0"),
    (dict(max_num_seqs=-1), r"max_num_seqs must be an integer >= 1, got -1"),
    (dict(token_budget=True), r"token_budget must be an integer >= 1, got True"),
    (dict(group_tokens=-512), r"group_tokens must be an integer >= 1, got -512"),
    (dict(num_pages=1), r"num_pages must be an integer >= 2 \(one is the reserved trash page\) or None, got 1"),
    (dict(num_groups=0), r"num_groups must be an integer >= 1 or None, got 0"),
    (dict(seed=-1), r"seed must be an integer >= 0, got -1"),
    (dict(kv_memory_fraction=0.0), r"kv_memory_fraction must be in \(0, 1\], got 0.0"),
    (dict(kv_memory_fraction=1.01), r"kv_memory_fraction must be in \(0, 1\], got 1.01"),
    (dict(kv_memory_fraction=-0.5), r"kv_memory_fraction must be in \(0, 1\], got -0.5"),
    (dict(dtype="float8"), r"unknown dtype 'float8'; choose one of float32, bfloat16, float16 or None"),
    (dict(dtype="int32"), r"unknown dtype 'int32'"),
    (dict(row_buckets=()), r"row_buckets must be a non-empty tuple of row counts >= 1 or None"),
    (dict(row_buckets=(16, 0)), r"row_buckets entry must be an integer >= 1, got 0"),
    (dict(compiler_options=("xla_flag",)), r"compiler_options must be a tuple of \(name, value\) pairs"),
]


@pytest.mark.parametrize("options,message", REFUSALS)
def test_engine_config_refuses_nonsense_naming_the_field_and_range(options, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**options)


def test_engine_config_takes_what_is_valid():
    import numpy as np

    cfg = EngineConfig(max_num_seqs=np.int64(8), dtype="bfloat16", kv_memory_fraction=1, row_buckets=[64, 16],
                       num_pages=2, max_model_len=1)
    assert cfg.row_buckets == (64, 16) and hash(cfg)  # a list becomes a tuple: the config stays hashable


def test_options_the_model_cannot_take_are_refused_where_the_model_is_known():
    """num_groups above the layer count (used to be clamped) and max_model_len beyond the
    position embeddings (used to be clamped) are refused before any weight is made."""
    from lp_jax.model.config import get_preset

    model = get_preset("tiny-qwen3-moe")  # 4 layers, 4096 positions
    EngineConfig(num_groups=4, max_model_len=4096).check_model(model)
    with pytest.raises(ValueError, match=r"num_groups must be in \[1, 4\] \(tiny-qwen3-moe has 4 layers\), got 5"):
        EngineConfig(num_groups=5).check_model(model)
    with pytest.raises(ValueError, match=r"max_model_len must be in \[1, 4096\]"):
        EngineConfig(max_model_len=4097).check_model(model)
    with pytest.raises(ValueError, match="num_groups must be in"):
        lp_jax.LLM("qwen3-30b-a3b", "layered", num_groups=49)  # refused before 57 GB of weights are made
