"""Text in and out for checkpoint folders that carry a `tokenizer.json` (the `tokenizers` format
transformers' fast tokenizers use): `load_tokenizer(folder)`, `train_byte_bpe(text, vocab_size)`.

The engine itself works on token ids; this is only for `lp-jax generate --prompt` and the demo
model (scripts/train_tiny_moe.py).
"""

from __future__ import annotations

import json
from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def load_tokenizer(folder):
    """The `tokenizers.Tokenizer` of a checkpoint folder; ValueError if it has no tokenizer.json."""
    from tokenizers import Tokenizer

    path = Path(folder) / TOKENIZER_FILE
    if not path.exists():
        raise ValueError(f"no {TOKENIZER_FILE} in {folder}: this checkpoint takes token ids only")
    return Tokenizer.from_file(str(path))


def train_byte_bpe(text: str, vocab_size: int):
    """A byte-level BPE (GPT-2 style: every byte is a token, merges learnt on `text`) of
    `vocab_size` tokens, no special tokens. Deterministic for a given text and vocab_size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not 256 <= vocab_size <= 65536:
        raise ValueError(f"vocab_size must be in [256, 65536], got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer, folder, model_max_length: int) -> None:
    """tokenizer.json and the tokenizer_config.json transformers' AutoTokenizer reads."""
    folder = Path(folder)
    tokenizer.save(str(folder / TOKENIZER_FILE))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
              "bos_token": None, "eos_token": None, "pad_token": None, "unk_token": None,
              "clean_up_tokenization_spaces": False}
    (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
