"""A GGUF file's tokenizer as the two documents a HuggingFace tokenizer folder holds:
tokenizer.json (the `tokenizers` library's format) and tokenizer_config.json (special tokens,
chat template), built from the `tokenizer.ggml.*` metadata. Plain data: no tokenizer library is
imported here; `lp_jax.serve.tokenizer` loads the documents, and `write_tokenizer_folder` writes
them for clients that want a folder (aiperf, transformers' AutoTokenizer).

Supported: byte-level BPE (`tokenizer.ggml.model` "gpt2"), with llama.cpp's pre-tokenizer
regexes for the `tokenizer.ggml.pre` names in `PRE_TOKENIZERS`. Control and user-defined tokens
(token types 3 and 4) become added tokens, matched whole before BPE runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from lp_jax.checkpoint.gguf import GGUFCheckpoint

CONTROL, USER_DEFINED = 3, 4
# llama.cpp splits digits one by one before the GPT-2 regex for these pre-tokenizer names; the
# `tokenizers` equivalent is Digits(individual_digits) then ByteLevel with its GPT-2 regex.
_DIGITS_THEN_GPT2 = [{"type": "Digits", "individual_digits": True},
                     {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]
_GPT2 = [{"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]
PRE_TOKENIZERS = {"smollm": _DIGITS_THEN_GPT2, "starcoder": _DIGITS_THEN_GPT2, "refact": _DIGITS_THEN_GPT2,
                  "gpt-2": _GPT2, "gpt2": _GPT2, "default": _GPT2}


def tokenizer_documents(meta: dict) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) as dicts from GGUF metadata. ValueError for a
    tokenizer model or pre-tokenizer this module does not build."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer model {kind!r}; supported: gpt2 (byte-level BPE); "
                         "give a tokenizer folder instead (lp-jax serve --tokenizer DIR)")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}; supported: {', '.join(PRE_TOKENIZERS)}")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    added = [{"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": t == CONTROL}
             for i, (tok, t) in enumerate(zip(tokens, types)) if t in (CONTROL, USER_DEFINED)]
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    special = {name: tokens[meta[f"tokenizer.ggml.{key}_token_id"]]
               for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                                 ("pad_token", "padding"))
               if f"tokenizer.ggml.{key}_token_id" in meta}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True}
    post = byte_level
    if add_bos:
        bos = special["bos_token"]
        bos_id = tokens.index(bos)
        post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                                          {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": PRE_TOKENIZERS[pre]},
        "post_processor": post, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {tok: i for i, tok in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in meta.get("tokenizer.ggml.merges", [])]},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": _context_length(meta), **special}
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    return tokenizer_json, config


def _context_length(meta: dict) -> int:
    arch = meta.get("general.architecture", "")
    return int(meta.get(f"{arch}.context_length", 2048))


def write_tokenizer_folder(checkpoint: GGUFCheckpoint, folder) -> Path:
    """Write tokenizer.json and tokenizer_config.json of a GGUF model into `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_json, config = tokenizer_documents(checkpoint.meta)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1))
    return folder
