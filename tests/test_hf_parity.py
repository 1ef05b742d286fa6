"""Parity with HuggingFace transformers.

Tiny float32 checkpoints written by transformers' own Qwen3-MoE, GPT-OSS and Qwen3 classes are
loaded with `load_hf` and run through our reference forward; logits must match the ones
transformers computed (lengths 1, 7 and 257, beyond GPT-OSS's 32-token window) and a plain greedy
loop must reproduce transformers' `generate(do_sample=False)`. The fixtures come from
`scripts/make_hf_fixtures.py`.
"""

import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from lp_jax.checkpoint import load_hf
from lp_jax.model.forward import reference_logits

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ["tiny-qwen3-moe", "tiny-gpt-oss", "tiny-qwen3"]
LENGTHS = [1, 7, 257]
MAX_ABS_ERROR = 1e-4
# The transformers release parity was established against. Regenerating the fixtures with another
# release is fine, but update this on purpose so the change is visible in review.
TRANSFORMERS_VERSION = "5.24.0"


# One compiled forward per (config, length): op-by-op dispatch recompiles every op for each new
# length, which made the greedy loop below ten times slower.
forward = jax.jit(reference_logits, static_argnums=0)


@functools.cache
def loaded(name: str):
    return load_hf(FIXTURES / name)


def hf_outputs(name: str):
    return np.load(FIXTURES / name / "hf_outputs.npz")


@pytest.mark.parametrize("name", MODELS)
def test_fixtures_made_by_expected_transformers(name):
    info = json.loads((FIXTURES / name / "fixture.json").read_text())
    print(f"{name}: made by transformers {info['transformers']}, torch {info['torch']}")
    assert info["transformers"] == TRANSFORMERS_VERSION, (
        f"{name} was made by transformers {info['transformers']}, not {TRANSFORMERS_VERSION}")
    hf_config = json.loads((FIXTURES / name / "config.json").read_text())
    assert hf_config["transformers_version"] == info["transformers"]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", MODELS)
def test_logits_match_transformers(name, length):
    config, params = loaded(name)
    outputs = hf_outputs(name)
    tokens, expected = outputs[f"tokens_{length}"], outputs[f"logits_{length}"]
    got = np.asarray(forward(config, params, tokens))
    assert got.shape == expected.shape == (length, config.vocab_size)
    err = np.abs(got - expected).max()
    assert err <= MAX_ABS_ERROR, f"{name}, {length} tokens: max abs logit error {err:.2e}"


@pytest.mark.parametrize("name", MODELS)
def test_greedy_continuation_matches_transformers(name):
    """Greedy decoding by re-running the whole sequence each step. The sequence lives in a fixed
    buffer (one compilation); causal attention makes the logits at position p independent of the
    unused tail, and MoE routing is per token."""
    config, params = loaded(name)
    outputs = hf_outputs(name)
    prompt, expected = outputs["prompt"], outputs["greedy"]
    tokens = np.zeros(len(prompt) + len(expected), np.int32)
    tokens[:len(prompt)] = prompt
    for t in range(len(prompt), len(tokens)):
        logits = forward(config, params, tokens)
        tokens[t] = int(np.argmax(logits[t - 1]))
    np.testing.assert_array_equal(tokens[len(prompt):], expected)


def test_gpt_oss_fixture_exercises_window_and_both_layer_kinds():
    config, _ = loaded("tiny-gpt-oss")
    assert set(config.layer_types) == {"sliding", "full"}
    assert max(LENGTHS) > config.sliding_window
    prompt_and_continuation = len(hf_outputs("tiny-gpt-oss")["prompt"]) + len(hf_outputs("tiny-gpt-oss")["greedy"])
    assert prompt_and_continuation > config.sliding_window
