import pytest

from lp_jax.model.config import PRESETS, even_split, get_preset
from lp_jax.model.spec import model_spec, param_count

PUBLISHED_TOTAL = {"qwen3-30b-a3b": 30.5e9, "gpt-oss-20b": 20.9e9, "qwen3-8b": 8.2e9, "smollm2-135m": 134.5e6}


@pytest.mark.parametrize("name", list(PRESETS))
def test_accounting_matches_declared_weights(name):
    cfg = get_preset(name)
    assert cfg.total_params() == param_count(model_spec(cfg))


@pytest.mark.parametrize("name,published", list(PUBLISHED_TOTAL.items()))
def test_total_params_within_one_percent_of_published(name, published):
    assert abs(get_preset(name).total_params() / published - 1) < 0.01


def test_active_params_published_conventions():
    # Qwen publishes 3.3B counting embedding and unembedding; OpenAI 3.6B counting only the unembedding.
    assert abs(get_preset("qwen3-30b-a3b").active_params(count_embedding=True) / 3.3e9 - 1) < 0.02
    assert abs(get_preset("gpt-oss-20b").active_params(count_embedding=False) / 3.6e9 - 1) < 0.01


def test_unknown_preset_names_known_ones():
    with pytest.raises(ValueError, match="unknown model preset 'nope'.*qwen3-30b-a3b"):
        get_preset("nope")


def test_bad_configs_rejected():
    cfg = get_preset("tiny-qwen3-moe")
    with pytest.raises(ValueError, match="architecture"):
        cfg.replace(arch="mamba")
    with pytest.raises(ValueError, match="KV heads"):
        cfg.replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="layer types"):
        cfg.replace(num_layers=5)


@pytest.mark.parametrize("n,parts", [(48, 16), (48, 5), (4, 4), (7, 3), (24, 1)])
def test_even_split(n, parts):
    ranges = even_split(n, parts)
    sizes = [hi - lo for lo, hi in ranges]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
