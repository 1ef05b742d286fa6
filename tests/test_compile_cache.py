"""JAX's persistent compilation cache (JAX_COMPILATION_CACHE_DIR) serves the engine's executables:
a second process with the same configuration finds every step there and compiles nothing new
(the README's start-up advice rests on this)."""

import json
import os
import pathlib
import subprocess
import sys

START_ENGINE = """
import json, lp_jax
llm = lp_jax.LLM("tiny-qwen3-moe", "layered", max_num_seqs=2, max_prefill_tokens=16, max_cohort_tokens=16,
                 token_budget=16, max_model_len=64, row_buckets=(18,))
outs = llm.generate([[1, 2, 3], [4, 5, 6, 7, 8, 9]], max_tokens=3)
print(json.dumps([o.token_ids for o in outs]))
"""


def _run(cache: pathlib.Path) -> list:
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(pathlib.Path(__file__).resolve().parent.parent))
    done = subprocess.run([sys.executable, "-c", START_ENGINE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_start_takes_every_executable_from_the_persistent_cache(tmp_path):
    first = _run(tmp_path)
    entries = sorted(p.name for p in tmp_path.iterdir())
    # Whole and range steps (layer counts 4, 1, 2) of the one row bucket, at least: all were written.
    assert len(entries) >= 3, entries
    assert _run(tmp_path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == entries  # nothing new: all were cache hits
