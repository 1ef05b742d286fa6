"""Text for the server: incremental detokenization (split UTF-8 characters), stop strings (cut,
never shown in part), and chat templates rendered as transformers renders them."""

from __future__ import annotations

import pytest

from lp_jax.serve.text_stream import TextStream
from lp_jax.serve.tokenizer import ChatTemplateError, TextTokenizer
from tests import smollm2


class ByteTokenizer:
    """Byte-level decoding as byte-level BPE does it: token i is the bytes VOCAB[i]; a sequence
    decodes to the concatenated bytes, incomplete UTF-8 becoming U+FFFD."""

    def __init__(self, vocab: list[bytes]):
        self.vocab = vocab

    def decode(self, ids, skip_special_tokens=True) -> str:
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def ids_of(self, pieces: list[bytes]) -> list[int]:
        return [self.vocab.index(p) for p in pieces]


TOK = ByteTokenizer([b"<p>", b"Hello", b" wor", b"ld", b"!", b" STO", b"P", b" more", b"\xe6\x97", b"\xa5",
                     b" caf", b"\xc3", b"\xa9", b"ST", b"OP"])


def run(pieces: list[bytes], stop=()) -> tuple[list[str], str | None]:
    stream = TextStream(TOK, TOK.ids_of([b"<p>"]), stop)
    deltas = [stream.push(t) for t in TOK.ids_of(pieces)]
    deltas[-1] += stream.finish()
    return deltas, stream.stopped_by


def test_deltas_concatenate_to_the_text_one_per_token():
    pieces = [b"Hello", b" wor", b"ld", b"!"]
    deltas, stopped = run(pieces)
    assert deltas == ["Hello", " wor", "ld", "!"] and stopped is None


def test_split_utf8_character_waits_for_its_last_byte():
    deltas, _ = run([b" caf", b"\xc3", b"\xa9", b"\xe6\x97", b"\xa5", b"!"])
    assert deltas == [" caf", "", "\u00e9", "", "\u65e5", "!"]
    assert "".join(deltas) == " caf\u00e9\u65e5!"


def test_stop_string_is_cut_and_never_shown_in_part():
    deltas, stopped = run([b"Hello", b" STO", b"P", b" more"], stop=(" STOP",))
    assert stopped == " STOP"
    assert "".join(deltas) == "Hello"
    assert deltas[1] == ""  # " STO" could begin the stop string: held back


def test_held_back_prefix_is_released_when_the_stop_string_does_not_complete():
    deltas, stopped = run([b"Hello", b" STO", b" more"], stop=(" STOP",))
    assert stopped is None
    assert deltas == ["Hello", "", " STO more"]


def test_stop_string_across_three_tokens_and_the_earliest_of_several():
    deltas, stopped = run([b"Hello", b"ST", b"OP", b"!"], stop=("!", "STOP", "lloS"))
    assert (stopped, "".join(deltas)) == ("lloS", "He")
    deltas, stopped = run([b"Hello", b" wor", b"ld", b"!"], stop=("ld!", "d"))
    assert (stopped, "".join(deltas)) == ("d", "Hello worl")


def test_no_more_text_after_a_stop():
    stream = TextStream(TOK, [], ("wor",))
    assert stream.push(TOK.ids_of([b"Hello"])[0]) == "Hello"
    assert stream.push(TOK.ids_of([b" wor"])[0]) == " "
    assert stream.push(TOK.ids_of([b"ld"])[0]) == "" and stream.finish() == ""


# --- chat templates ------------------------------------------------------------------------------

def test_chat_template_renders_like_transformers():
    """SmolLM2's template (from the GGUF) with the default system prompt it adds, trim_blocks and
    the generation prompt."""
    smollm2.require_smollm2()
    from lp_jax.serve.server import load_tokenizer

    tok = load_tokenizer(smollm2.checkpoint())
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == 1 and ids.count(2) == 2  # <|im_start|>, <|im_end|> as single tokens
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.encode("2024") == [34, 32, 34, 36]  # digits one by one (llama.cpp's smollm pre-tokenizer)


def test_template_errors_are_chat_template_errors():
    doc = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
    tok = TextTokenizer(doc, {"chat_template": "{{ raise_exception('no system messages') }}"})
    with pytest.raises(ChatTemplateError, match="no system messages"):
        tok.apply_chat_template([{"role": "system", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="no chat template"):
        TextTokenizer(doc, {}).apply_chat_template([{"role": "user", "content": "x"}])


def test_tokenizer_folder_round_trip(tmp_path):
    """The GGUF's tokenizer written as a HuggingFace folder (what aiperf and --tokenizer read) loads
    back to the same tokenizer; a chat_template.jinja beside it takes precedence."""
    smollm2.require_smollm2()
    from lp_jax.checkpoint.gguf_tokenizer import write_tokenizer_folder
    from lp_jax.serve.server import load_tokenizer

    ck = smollm2.checkpoint()
    direct = load_tokenizer(ck)
    folder = load_tokenizer(ck, write_tokenizer_folder(ck, tmp_path))
    text = "Hello world! <|im_start|>user 2024 naïve"
    assert folder.encode(text) == direct.encode(text)
    assert folder.special_token("eos_token") == "<|im_end|>" and folder.chat_template == direct.chat_template
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] | upper }}")
    assert TextTokenizer.from_folder(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}]) == "HI"
    with pytest.raises(ValueError, match="no tokenizer.json"):
        TextTokenizer.from_folder(tmp_path / "nope")
