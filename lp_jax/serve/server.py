"""`lp-jax serve`: load the model and its tokenizer, start the engine thread, run uvicorn.

Tokenizer, first found: --tokenizer DIR (a HuggingFace tokenizer folder); the GGUF file's own
tokenizer metadata; a checkpoint folder's tokenizer.json. Presets with random weights have none:
they serve token-id prompts only, and say so when sent text.
"""

from __future__ import annotations

import logging
import os
import time

from tqdm import tqdm

from lp_jax.checkpoint.gguf import GGUFCheckpoint, is_gguf
from lp_jax.serve import DEFAULT_MAX_WAITING
from lp_jax.serve.app import ServeState, build_app
from lp_jax.serve.metrics import ServerMetrics
from lp_jax.serve.tokenizer import TextTokenizer
from lp_jax.serve.worker import EngineWorker

log = logging.getLogger("lp_jax.serve")


def load_tokenizer(model, tokenizer_dir=None) -> TextTokenizer | None:
    """The tokenizer for `model` (a name, path or GGUFCheckpoint), or None if it has none."""
    if tokenizer_dir is not None:
        return TextTokenizer.from_folder(tokenizer_dir)
    if isinstance(model, GGUFCheckpoint):
        from lp_jax.checkpoint.gguf_tokenizer import tokenizer_documents
        tokenizer_json, config = tokenizer_documents(model.meta)
        return TextTokenizer(tokenizer_json, config, source=str(model.path))
    if isinstance(model, (str, os.PathLike)) and os.path.isfile(os.path.join(model, "tokenizer.json")):
        return TextTokenizer.from_folder(model)
    return None


def make_state(model, schedule: str = "layered", engine_options: dict | None = None, *, tokenizer_dir=None,
               max_waiting: int = DEFAULT_MAX_WAITING, request_log: str | None = None,
               served_model_name: str | None = None, params: dict | None = None, progress: bool = True) -> ServeState:
    """Build the engine (compiling everything it will run), start its thread, and return what the
    app needs. `model`: a preset name, checkpoint folder, .gguf path, packaged checkpoint name or an
    opened GGUFCheckpoint; `params` (optional) replaces the weights it would load."""
    import lp_jax

    name = served_model_name or (model.name if isinstance(model, GGUFCheckpoint) else str(model))
    if is_gguf(model):
        model = GGUFCheckpoint(model)
    tokenizer = load_tokenizer(model, tokenizer_dir)
    bar = tqdm(desc="compiling", unit="executable", disable=not progress, leave=False)

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    t = time.perf_counter()
    try:
        llm = lp_jax.LLM(model, schedule, params=params, progress=advance, **(engine_options or {}))
    finally:
        bar.close()
    limit = llm.engine_config.model_len(llm.model_config)
    if tokenizer is not None and tokenizer.vocab_size > llm.model_config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary only "
                         f"{llm.model_config.vocab_size}")
    log.info("engine ready in %.1f s: %s, %s schedule, %d KV pages, context %d tokens%s", time.perf_counter() - t,
             name, schedule, llm.engine.blocks.num_pages, limit,
             "" if tokenizer else " (no tokenizer: token-id prompts only)")
    metrics = ServerMetrics(name, llm.engine.blocks.num_pages)
    worker = EngineWorker(llm, max_waiting, metrics, request_log)
    worker.start()
    return ServeState(worker, tokenizer, name, limit, llm.model_config.vocab_size, metrics)


def run(state: ServeState, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), then stop the engine thread."""
    import uvicorn

    uvicorn.run(build_app(state), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
