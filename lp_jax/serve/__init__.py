"""The OpenAI-compatible HTTP server over the engine (`lp-jax serve`): routes in app, the engine's
thread in worker, request/response shapes in protocol, text in tokenizer and text_stream,
Prometheus metrics in metrics, start-up in server."""

DEFAULT_MAX_WAITING = 512  # requests that may wait for the engine before new ones get 503
