"""A live `lp-jax serve` app on a loopback port, in this process (a uvicorn server on its own
thread), so tests share the compile cache and skip a second JAX start-up."""

from __future__ import annotations

import threading
import time

import uvicorn

from lp_jax.serve.app import build_app

STARTUP_TIMEOUT_S = 30


class LiveServer:
    def __init__(self, state):
        self.state = state
        config = uvicorn.Config(build_app(state), host="127.0.0.1", port=0, log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(STARTUP_TIMEOUT_S)
        self.state.worker.stop()


def post(url: str, path: str, body, timeout: float = 60.0) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a POST; `body` is a dict (sent as JSON) or raw bytes."""
    import http.client
    import json
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, data, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else {}, dict(resp.getheaders())
    finally:
        conn.close()


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_byte_tokenizer(folder) -> None:
    """A HuggingFace tokenizer folder small enough for the tiny presets' 512-token vocabulary:
    byte-level BPE with no merges (one token per byte, ids 0-255), <|im_start|> and <|im_end|> as
    256 and 257, and a ChatML template."""
    import json
    import pathlib

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>",
                                                             "chat_template": CHAT_TEMPLATE}))
