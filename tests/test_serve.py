"""`lp-jax serve` on a tiny random-weight preset (no tokenizer: token-id prompts), on loopback:
the openai client streams, tokens equal an independent greedy decode (completions; chat too, with
a byte-level tokenizer folder given as --tokenizer), bad input gets 400 without
disturbing a request in flight, a full waiting queue gets 503 with Retry-After, and a client
that goes away mid-request frees its pages."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time

import openai
import pytest

from lp_jax.serve.server import make_state
from tests.engine_helpers import preset_model, reference_greedy
from tests.serve_helpers import LiveServer, post, write_byte_tokenizer

# test_engine_api's engine options: in one pytest process the compiled executables are shared.
ENGINE = dict(max_model_len=256, max_num_seqs=8, max_prefill_tokens=128, max_cohort_tokens=128, token_budget=64,
              row_buckets=(16, 64, 136))
MAX_WAITING = 4
MODEL = "tiny-qwen3-moe"


@pytest.fixture(scope="module")
def server():
    cfg, params = preset_model(MODEL, seed=5)
    state = make_state(MODEL, "chunked", ENGINE, params=params, max_waiting=MAX_WAITING, progress=False)
    with LiveServer(state) as live:
        live.params = params
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def chat_server(server, tmp_path_factory):
    """The same preset and weights with a tokenizer folder (the executables are already compiled)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    write_byte_tokenizer(folder)
    state = make_state(MODEL, "chunked", ENGINE, params=server.params, tokenizer_dir=folder, progress=False)
    with LiveServer(state) as live:
        live.folder = folder
        yield live


def metric(server, name: str, **labels) -> float:
    """A sample of /metrics (0 if absent)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    want = {"model_name": MODEL} | labels
    for line in text.splitlines():
        m = re.match(r"^([\w:]+)\{(.*)\} (\S+)$", line)
        if m and m.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))) == want:
            return float(m.group(3))
    return 0.0


def wait_for(predicate, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


PROMPT = [5, 17, 300, 42, 99, 7]


def test_models_and_health(server, client):
    cards = client.models.list().data
    assert [(c.id, c.model_extra["root"], c.model_extra["max_model_len"]) for c in cards] == [(MODEL, MODEL, 256)]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200


def test_streamed_tokens_are_the_greedy_decode(server, client):
    """One SSE event per token, the usage chunk last; the tokens equal a plain greedy loop over the
    reference forward on the same weights, and the non-streaming response's."""
    cfg, _ = preset_model(MODEL, seed=5)
    want = reference_greedy(cfg, server.params, PROMPT, 8, 64)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    assert [c.choices[0].model_extra["token_ids"] for c in chunks[:-1]] == [[t] for t in want]
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * 7 + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert chunks[-1].usage.prompt_tokens == len(PROMPT)
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
    assert whole.choices[0].model_extra["token_ids"] == want and whole.usage.total_tokens == len(PROMPT) + 8


def test_streamed_chat_is_the_greedy_decode_of_the_templated_prompt(server, chat_server):
    """Chat on the tiny preset: the conversation rendered by ChatML (written out here) and encoded
    by the tokenizers library is the prompt; the streamed tokens equal the greedy decode of it and
    the streamed text is their decoding."""
    from tokenizers import Tokenizer

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, caf\u00e9?"}]
    text = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi, caf\u00e9?<|im_end|>\n<|im_start|>assistant\n"
    tok = Tokenizer.from_file(str(chat_server.folder / "tokenizer.json"))
    prompt = tok.encode(text, add_special_tokens=False).ids
    # one token per byte, the 3 <|im_start|> (256) and 2 <|im_end|> (257) one each
    assert prompt.count(256) == 3 and prompt.count(257) == 2 and len(prompt) == len(text.encode()) - 3 * 12 - 2 * 10 + 5
    cfg, _ = preset_model(MODEL, seed=5)
    want = reference_greedy(cfg, server.params, prompt, 8, 64)
    client = openai.OpenAI(base_url=chat_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].model_extra["token_ids"] for c in chunks[:-1]] == [[t] for t in want]
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == tok.decode(want)
    assert chunks[-1].usage.prompt_tokens == len(prompt) and chunks[-1].usage.completion_tokens == 8
    status, tokenized, _ = post(chat_server.url, "/tokenize", {"messages": messages})
    assert status == 200 and tokenized["tokens"] == prompt


def test_stop_token_ids_and_seeded_sampling(server, client):
    cfg, _ = preset_model(MODEL, seed=5)
    greedy = reference_greedy(cfg, server.params, PROMPT, 8, 64)
    stop_at = greedy[2]
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0,
                                    extra_body={"stop_token_ids": [stop_at]})
    choice = out.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop_at
    assert choice.model_extra["token_ids"] == greedy[:greedy.index(stop_at) + 1]
    runs = [client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=1.0,
                                      seed=123, extra_body={"top_k": 50}).choices[0].model_extra["token_ids"]
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 6


BAD = [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object"),
    ({"prompt": PROMPT, "max_tokens": "5"}, "max_tokens", "valid integer"),
    ({"prompt": PROMPT, "temperature": "hot"}, "temperature", "valid number"),
    ({"prompt": PROMPT, "temperature": -1.0}, "temperature", "temperature must be"),
    ({"prompt": PROMPT, "top_p": 1.5}, "top_p", r"top_p must be in \(0, 1\]"),
    ({"prompt": PROMPT, "max_tokens": 0}, "max_tokens", "max_tokens must be a positive integer"),
    ({"prompt": [1] * 250, "max_tokens": 10}, "prompt", "exceeds the context limit of 256"),
    ({"prompt": [1, 512]}, "prompt", "outside the vocabulary"),
    ({"prompt": []}, "prompt", "empty prompt"),
    ({"prompt": "hello"}, "prompt", "has no tokenizer"),
    ({"prompt": [[1, 2], [3]]}, "prompt", "a batch of 2 prompts"),
    ({"prompt": PROMPT, "n": 2}, "n", "n=2 is not supported"),
    ({"prompt": PROMPT, "stop": ["x"]}, "stop", "need a tokenizer"),
    ({"prompt": PROMPT, "stop_token_ids": [9999]}, "stop_token_ids", "outside the vocabulary"),
    ({"prompt": PROMPT, "model": "gpt-4"}, "model", "does not exist"),
]


@pytest.mark.parametrize("body,param,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_refused_with_openai_error(server, body, param, message):
    status, error, _ = post(server.url, "/v1/completions", body)
    assert status == (404 if param == "model" else 400), error
    assert error["error"]["param"] == param and error["error"]["code"] == status
    assert re.search(message, error["error"]["message"]), error


def test_bad_input_does_not_disturb_a_request_in_flight(server, client):
    result = {}

    def long_request():
        chunks = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        result["tokens"] = [t for c in chunks for t in c.choices[0].model_extra["token_ids"]]

    thread = threading.Thread(target=long_request)
    thread.start()
    for body, _, _ in BAD:
        post(server.url, "/v1/completions", body)
    post(server.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    thread.join(60)
    assert len(result["tokens"]) == 40


def test_chat_without_tokenizer_says_so(client):
    with pytest.raises(openai.BadRequestError, match="has no tokenizer"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_full_waiting_queue_gets_503_with_retry_after(server):
    """max_num_seqs (8) run, MAX_WAITING (4) wait: of 20 simultaneous requests some are refused
    with 503 and Retry-After; every accepted one completes with its exact token count."""
    results = [None] * 20
    gate = threading.Barrier(20)

    def one(i):
        gate.wait()
        results[i] = post(server.url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 30, "ignore_eos": True})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    refused = [r for r in results if r[0] == 503]
    done = [r for r in results if r[0] == 200]
    assert refused and len(refused) + len(done) == 20
    assert all(r[2].get("retry-after") == "1" and "already waiting" in r[1]["error"]["message"] for r in refused)
    assert all(r[1]["usage"]["completion_tokens"] == 30 for r in done)
    assert len(done) >= 8 + MAX_WAITING - 1


def test_client_gone_mid_stream_aborts_and_frees_pages(server):
    aborted = metric(server, "lp_jax:request_success_total", finished_reason="abort")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 200, "ignore_eos": True,
                                                        "stream": True}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    events = 0
    while events < 3:
        if resp.readline().startswith(b"data: "):
            events += 1
    assert metric(server, "lp_jax:kv_pages_used") > 0
    conn.sock.close()  # gone, mid-stream
    conn.close()
    # Non-streaming too: the handler checks its connection every DISCONNECT_POLL_S (0.1 s).
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 240, "ignore_eos": True}),
                 {"Content-Type": "application/json"})
    assert wait_for(lambda: metric(server, "lp_jax:kv_pages_used") > 0)  # 240 tokens take ~1 s here
    conn.sock.close()
    conn.close()
    assert wait_for(lambda: metric(server, "lp_jax:request_success_total", finished_reason="abort") == aborted + 2)
    assert wait_for(lambda: metric(server, "lp_jax:kv_pages_used") == 0)
    assert server.state.worker.engine.blocks.all_free()


def test_metrics_report_latencies_and_expert_bytes(server, client):
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    post(server.url, "/v1/completions", {"prompt": []})
    assert metric(server, "lp_jax:time_to_first_token_seconds_count") >= 1
    assert metric(server, "lp_jax:inter_token_latency_seconds_count") >= 3
    assert metric(server, "lp_jax:e2e_request_latency_seconds_count") >= 1
    assert metric(server, "lp_jax:expert_bytes_total") > 0  # an MoE preset
    assert metric(server, "lp_jax:kv_pages_total") > 0
    assert metric(server, "lp_jax:request_rejected_total", status="400") >= 1


def test_cli_refuses_a_bad_model_before_starting(capsys):
    from lp_jax.cli import main

    assert main(["serve", "--model", "no-such-model", "--no-progress", "--port", "1"]) == 2
    assert "unknown model preset 'no-such-model'" in capsys.readouterr().err
