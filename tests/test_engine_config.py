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
        with pytest.raises(ValueError, match=f"{name} must be >= 1, got 0"):
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
