"""The demo model trained on Shakespeare (models/tiny-shakespeare-moe, scripts/train_tiny_moe.py).

The committed checkpoint's logits are checked against an independent float64 numpy Qwen3-MoE
(tests/numpy_qwen3_moe.py, itself checked here against transformers' own logits on the
tiny-qwen3-moe fixture); a short training run on a synthetic text must lower the loss and repeat
bit for bit; `save_hf` must round-trip through `load_hf`.
"""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from lp_jax.checkpoint import load_hf
from lp_jax.checkpoint.common import leaves
from lp_jax.checkpoint.hf_save import save_hf
from lp_jax.model.config import TINY_QWEN3, TINY_QWEN3_MOE
from lp_jax.model.forward import reference_logits
from lp_jax.model.init import init_params
from lp_jax.checkpoint.tokenizer import load_tokenizer, train_byte_bpe
from tests.numpy_qwen3_moe import load_tensors, qwen3_moe_logits
from tests.script_loader import load_script

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "tiny-shakespeare-moe"
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-qwen3-moe"
forward = jax.jit(reference_logits, static_argnums=0)


def test_numpy_reference_matches_transformers():
    """The oracle itself: transformers' logits of the tiny-qwen3-moe fixture (T = 7 and 257)."""
    hf = json.loads((FIXTURE / "config.json").read_text())
    outputs = np.load(FIXTURE / "hf_outputs.npz")
    for length in (7, 257):
        logits, _ = qwen3_moe_logits(hf, load_tensors(FIXTURE), outputs[f"tokens_{length}"])
        assert np.abs(logits - outputs[f"logits_{length}"]).max() < 1e-5


def test_committed_checkpoint_matches_float64_reference():
    """Our loader + forward (f32) against the numpy f64 forward on the raw tensors: a Shakespeare
    prompt and random ids over the whole vocabulary, past 64 tokens."""
    hf = json.loads((MODEL / "config.json").read_text())
    config, params = load_hf(MODEL)
    assert config.arch == "qwen3_moe" and config.num_experts >= 16 and config.total_params() > 1_000_000
    tokenizer = load_tokenizer(MODEL)
    prompt = tokenizer.encode("ROMEO\nBut soft what light through yonder window breaks").ids
    random_ids = np.random.default_rng(0).integers(0, config.vocab_size, 80)
    for tokens in (np.array(prompt), random_ids):
        expected, margin = qwen3_moe_logits(hf, load_tensors(MODEL), tokens)
        # f32 router probabilities are good to ~1e-7: a closer tie could pick other experts than f64.
        assert margin > 1e-6, f"a routing near-tie ({margin:.1e}) would make f32 and f64 pick different experts"
        got = np.asarray(forward(config, params, tokens))
        err = np.abs(got - expected).max()
        assert err < 1e-3 * max(1.0, np.abs(expected).max()), f"max abs logit error {err:.2e}"


def test_committed_tokenizer_round_trips_any_text():
    tokenizer = load_tokenizer(MODEL)
    assert tokenizer.get_vocab_size() == json.loads((MODEL / "config.json").read_text())["vocab_size"]
    assert json.loads((MODEL / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    for text in ("To be or not to be\nthat is the question", "café, naïve — 東京 ☃"):
        assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_committed_summary_states_the_held_out_figures():
    summary = json.loads((MODEL / "train_summary.json").read_text())
    # bits per byte < nats per token / ln 2 (a token holds more than one byte), and the model
    # learnt well beyond a uniform guess over its vocabulary.
    assert 0 < summary["heldout_bits_per_byte"] < summary["heldout_nats_per_token"] / math.log(2)
    assert summary["heldout_nats_per_token"] < 0.75 * math.log(summary["settings"]["vocab"])


def synthetic_text(n_lines: int = 400) -> str:
    words = "the king queen lord my good sir thou art not a fool love night sweet death".split()
    rng = np.random.default_rng(7)
    return "".join(" ".join(words[i] for i in rng.integers(0, len(words), 6)) + "\n" for _ in range(n_lines))


def test_short_training_run_lowers_the_loss_and_repeats_exactly(tmp_path, persistent_compilation_cache):
    from lp_jax.bench.study import use_compilation_cache

    script = load_script("train_tiny_moe")
    # Each run jits its own step: the second loads the first's executables from the cache
    # instead of compiling them again (what repeats is the seeded run, not XLA's compile).
    use_compilation_cache(str(tmp_path / "compiled"))
    args = script.parse_args(["--steps", "20", "--batch", "4", "--seq-len", "32", "--layers", "2", "--hidden", "32",
                              "--experts", "4", "--top-k", "2", "--expert-hidden", "16", "--vocab", "300",
                              "--warmup", "3", "--lr", "1e-2", "--eval-every", "10"])
    text = synthetic_text()
    tokenizer = train_byte_bpe(text, args.vocab)
    ids = np.asarray(tokenizer.encode(text).ids, np.int32)
    held = script.windows(ids[-400:], args.seq_len + 1)
    token_bytes = np.array([len(tokenizer.decode([i]).encode()) for i in range(args.vocab)])
    config = script.model_config(args)
    runs = [script.train(config, args, ids[:-400], held, token_bytes)[1] for _ in range(2)]
    assert runs[0] == runs[1], "two runs from the same seed differ"
    losses = [r["train_nats_per_token"] for r in runs[0]]
    held_losses = [r["heldout_nats_per_token"] for r in runs[0] if r["heldout_nats_per_token"] != ""]
    assert np.mean(losses[-5:]) < losses[0] - 1.5, losses
    assert held_losses[-1] < held_losses[0] and held_losses[-1] < math.log(args.vocab) - 1.5, held_losses


@pytest.mark.parametrize("config", [TINY_QWEN3_MOE, TINY_QWEN3.replace(tie_word_embeddings=True)],
                         ids=["qwen3-moe", "qwen3-tied"])
def test_save_hf_round_trips_through_load_hf(config, tmp_path):
    params = init_params(config, seed=3)
    save_hf(tmp_path, config, params)
    loaded_config, loaded = load_hf(tmp_path)
    assert loaded_config.replace(name=config.name) == config
    ours, theirs = dict(leaves(params)), dict(leaves(loaded))
    assert ours.keys() == theirs.keys()
    for path in ours:
        np.testing.assert_array_equal(np.asarray(ours[path]), np.asarray(theirs[path]), err_msg=str(path))
    with pytest.raises(ValueError, match="already exists"):
        save_hf(tmp_path, config, params)


def test_save_hf_refuses_gpt_oss(tmp_path):
    from lp_jax.model.config import TINY_GPT_OSS
    with pytest.raises(ValueError, match="not 'gpt_oss'"):
        save_hf(tmp_path, TINY_GPT_OSS, {})


def test_generate_refuses_text_prompts_without_a_tokenizer(capsys, tmp_path):
    from lp_jax.cli import main
    assert main(["generate", "--model", "tiny-qwen3-moe", "--prompt", "hello"]) == 2
    assert "needs --model to be a checkpoint folder" in capsys.readouterr().err
    save_hf(tmp_path, TINY_QWEN3_MOE, init_params(TINY_QWEN3_MOE))
    assert main(["generate", "--model", str(tmp_path), "--prompt", "hello"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_routing_report_on_a_checkpoint_uses_its_weights(tmp_path, capsys):
    """`lp-jax routing --model FOLDER`: the engine path with the checkpoint's weights; a calibrated
    profile is refused (a checkpoint routes by its own router)."""
    from lp_jax.cli import main
    folder = tmp_path / "ckpt"
    save_hf(folder, TINY_QWEN3_MOE, init_params(TINY_QWEN3_MOE, seed=5))
    assert main(["routing", "--model", str(folder), "--out", str(tmp_path / "a")]) == 2
    assert "pass --routing uniform" in capsys.readouterr().err
    assert main(["routing", "--model", str(folder), "--routing", "uniform", "--batch-sizes", "1,4",
                 "--chunk-sizes", "32", "--prompt-tokens", "64", "--draws", "1", "--no-progress",
                 "--out", str(tmp_path / "b")]) == 0
    data = json.loads((tmp_path / "b" / "coverage.json").read_text())
    assert "the checkpoint's weights" in data["method"]
    assert {p["size"] for p in data["points"] if p["axis"] == "decode"} == {1, 4}


def test_gpu_driver_sizes_steps_to_the_budget_and_compares_runs():
    driver = load_script("train_tiny_moe_gpu")
    probe = {"startup_s": 10.0, "first_step_s": 30.0, "step_s": 0.05}
    steps, train_s = driver.choose_steps(probe, left_s=150.0, min_steps=200, max_steps=800)
    assert steps % 100 == 0 and 200 <= steps <= 800
    assert steps * driver.CONCURRENCY_SLOWDOWN * probe["step_s"] <= train_s
    assert driver.choose_steps(probe | {"step_s": 10.0}, 150.0, 200, 800)[0] == 200  # never below the floor
    assert driver.choose_steps(probe | {"step_s": 1e-4}, 150.0, 200, 800)[0] == 800  # nor above the cap
    runs = [{"heldout_nats_per_token": n, "heldout_bits_per_byte": n / 2, "command": "c", "device": "d",
             "train_wall_s": 1.0} for n in (3.0, 3.03)]
    result = driver.compare(runs)
    assert abs(result["relative_difference"] - 0.01) < 1e-9 and result["within_2_percent"]
    assert "1.000%" in driver.reproduction_markdown(result)
    assert not driver.compare([runs[0], runs[1] | {"heldout_nats_per_token": 3.1}])["within_2_percent"]
