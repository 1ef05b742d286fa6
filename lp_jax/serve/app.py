"""The HTTP routes (FastAPI): OpenAI's /v1/completions, /v1/chat/completions and /v1/models, and
vLLM's /health, /tokenize, /detokenize and /metrics.

A handler parses and checks the body (400 with an OpenAI-style error naming the field), turns the
prompt into token ids, hands a Submission to the engine thread and awaits its events on an asyncio
queue the engine thread fills through `loop.call_soon_threadsafe`. Streaming responses are SSE,
one `data:` event per generated token, then a usage chunk (stream_options.include_usage) and
`data: [DONE]`. A client that goes away mid-request aborts its engine request, which frees its
KV pages; a stop string seen in the text aborts it the same way.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from lp_jax.engine.request import SamplingParams
from lp_jax.serve import protocol as p
from lp_jax.serve.text_stream import TextStream
from lp_jax.serve.tokenizer import ChatTemplateError
from lp_jax.serve.worker import Accepted, Rejected, Submission, Tokens

ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError",
               503: "ServiceUnavailableError"}
RETRY_AFTER_S = 1  # what a 503 for a full waiting queue suggests
DISCONNECT_POLL_S = 0.1  # how often a non-streaming request checks that its client is still there


class ClientGone(Exception):
    """The client of a non-streaming request disconnected while it ran."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class ServeState:
    """What the routes need: the engine thread, the tokenizer (None for presets with random weights),
    the served name and context limit, the metrics."""

    worker: object  # EngineWorker
    tokenizer: object | None  # TextTokenizer
    model_name: str
    max_model_len: int
    vocab_size: int
    metrics: object  # ServerMetrics
    created: int = 0


def build_app(state: ServeState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        yield
        state.worker.stop()

    app = FastAPI(title="lp-jax", lifespan=lifespan)
    state.created = state.created or int(time.time())

    @app.exception_handler(ApiError)
    async def on_api_error(request, e: ApiError):
        state.metrics.on_rejected(e.status)
        return error_response(e.status, e.message, e.param)

    @app.get("/health")
    async def health():
        if not state.worker.alive:
            return error_response(503, "the engine loop is not running" + (": see the server log" if state.worker.error
                                                                            else ""))
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [p.model_card(state.model_name, state.max_model_len, state.created)]}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await parse(request, p.TokenizeRequest)
        check_model(state, body.model)
        tok = need_tokenizer(state, "prompt")
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give exactly one of prompt and messages", "prompt")
        if body.messages is not None:
            text = chat_text(state, body.messages, body.add_generation_prompt)
            ids = tok.encode(text, add_special_tokens=bool(body.add_special_tokens))
        else:
            ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens is not False)
        return {"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids,
                "token_strs": tok.token_strings(ids) if body.return_token_strs else None}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await parse(request, p.DetokenizeRequest)
        check_model(state, body.model)
        tok = need_tokenizer(state, "tokens")
        bad = [t for t in body.tokens if not 0 <= t < state.vocab_size]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary [0, {state.vocab_size})", "tokens")
        return {"prompt": tok.decode(body.tokens, skip_special_tokens=False)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        arrival = time.perf_counter()
        body = await parse(request, p.CompletionRequest)
        check_request(state, body)
        prompt = completion_prompt(state, body.prompt)
        max_tokens = body.max_tokens if body.max_tokens is not None else state.max_model_len - len(prompt)
        return await generate(state, request, body, prompt, max_tokens, arrival, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrival = time.perf_counter()
        body = await parse(request, p.ChatCompletionRequest)
        check_request(state, body)
        tok = need_tokenizer(state, "messages")
        prompt = tok.encode(chat_text(state, body.messages, body.add_generation_prompt), add_special_tokens=False)
        given = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = given if given is not None else state.max_model_len - len(prompt)
        return await generate(state, request, body, prompt, max_tokens, arrival, chat=True)

    return app


# --- request checks --------------------------------------------------------------------------------

async def parse(request: Request, model: type[BaseModel]):
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        raise ApiError(400, f"{where}: {first['msg']}{more}", where.split(".")[0] or None) from None


def check_model(state: ServeState, model: str | None) -> None:
    if model is not None and model != state.model_name:
        raise ApiError(404, f"The model `{model}` does not exist; this server serves `{state.model_name}`", "model")


def check_request(state: ServeState, body: p.SamplingFields) -> None:
    check_model(state, body.model)
    field = p.unsupported(body)
    if field:
        raise ApiError(400, f"{field}={getattr(body, field)!r} is not supported by lp-jax", field)
    if not state.worker.alive:
        raise ApiError(503, "the engine loop is not running")


def need_tokenizer(state: ServeState, param: str):
    if state.tokenizer is None:
        raise ApiError(400, f"{state.model_name} has no tokenizer (a preset with random weights): send the prompt "
                            "as a list of token ids to /v1/completions, or start the server with --tokenizer DIR",
                       param)
    return state.tokenizer


def completion_prompt(state: ServeState, prompt) -> list[int]:
    """Token ids of a completion prompt: text, token ids, or a list of one of either."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise ApiError(400, f"prompt: a batch of {len(prompt)} prompts; lp-jax takes one prompt per request",
                           "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return need_tokenizer(state, "prompt").encode(prompt, add_special_tokens=True)
    return prompt


def chat_text(state: ServeState, messages: list[p.ChatMessage], add_generation_prompt: bool) -> str:
    try:
        return need_tokenizer(state, "messages").apply_chat_template(
            [m.as_template_input() for m in messages], add_generation_prompt)
    except ChatTemplateError as e:
        raise ApiError(400, str(e), "messages") from None


def sampling_params(state: ServeState, body: p.SamplingFields, max_tokens: int) -> SamplingParams:
    top_k = body.top_k if body.top_k not in (None, -1) else 0  # -1 is vLLM's "off"
    params = SamplingParams(
        max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p, top_k=top_k, seed=body.seed,
        stop_token_ids=tuple(body.stop_token_ids or ()), ignore_eos=body.ignore_eos)
    try:
        params.validate(state.vocab_size)
    except ValueError as e:
        name = str(e).split(" ")[0]
        raise ApiError(400, str(e), {"stop": "stop_token_ids"}.get(name, name)) from None
    return params


# --- generation --------------------------------------------------------------------------------------

@dataclass
class Piece:
    """One generated token as the response shows it."""

    text: str
    token_id: int
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class Generation:
    """One request in flight: submits it, then turns the engine's events into Pieces."""

    def __init__(self, state: ServeState, request: Request, prompt: list[int], params: SamplingParams,
                 stop: tuple[str, ...], arrival_s: float):
        self.state, self.prompt, self.params = state, prompt, params
        self.events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def deliver(event) -> None:
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the event loop has closed: nobody is listening any more
                pass

        label = request.headers.get("x-request-id") or p.new_id("req")
        self.submission = Submission(prompt, params, arrival_s, deliver, label)
        self.text = TextStream(state.tokenizer, prompt, stop) if state.tokenizer is not None else None
        if stop and self.text is None:
            raise ApiError(400, "stop strings need a tokenizer; use stop_token_ids", "stop")
        self.ended = False
        self.num_tokens = 0
        self._checked_s = time.monotonic()  # when the client's connection was last checked

    async def start(self) -> None:
        """Submit; raise ApiError if the engine refuses the request."""
        self.state.worker.submit(self.submission)
        try:
            first = await self.events.get()
        except BaseException:  # cancelled (shutdown): the engine must not keep it
            self.state.worker.abort(self.submission)
            raise
        if isinstance(first, Rejected):
            self.ended = True
            raise ApiError(first.status, first.message, first.param)
        assert isinstance(first, Accepted), first

    async def pieces(self, request: Request | None = None) -> AsyncIterator[Piece]:
        """The generated tokens as they come. With `request` (non-streaming responses), the client's
        connection is checked while waiting; a streaming response is cancelled by the server instead."""
        while True:
            event = await self._next_event(request)
            if isinstance(event, Rejected):
                self.ended = True
                raise ApiError(event.status, event.message, event.param)
            for i, token in enumerate(event.token_ids):
                self.num_tokens += 1
                last = i == len(event.token_ids) - 1 and event.finish_reason is not None
                text = self.text.push(token) if self.text is not None else ""
                if self.text is not None and self.text.stopped_by is not None:
                    self.ended = True
                    if not last:  # the engine would go on: stop it (frees its pages)
                        self.state.worker.abort(self.submission, "stop")
                    yield Piece(text, token, "stop", self.text.stopped_by)
                    return
                if last:
                    self.ended = True
                    if self.text is not None:
                        text += self.text.finish()
                    stop_reason = token if token in self.params.stop_token_ids else None
                    yield Piece(text, token, event.finish_reason, stop_reason)
                    return
                yield Piece(text, token)

    async def _next_event(self, request: Request | None):
        if request is None:
            return await self.events.get()
        while True:
            now = time.monotonic()
            if now - self._checked_s >= DISCONNECT_POLL_S:
                self._checked_s = now
                if await request.is_disconnected():
                    raise ClientGone()
            try:
                return await asyncio.wait_for(self.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                pass

    def close(self) -> None:
        """Abort the engine request unless it already ended (client gone, or an error)."""
        if not self.ended:
            self.ended = True
            self.state.worker.abort(self.submission, "abort")


async def generate(state: ServeState, request: Request, body: p.SamplingFields, prompt: list[int], max_tokens: int,
                   arrival_s: float, chat: bool):
    params = sampling_params(state, body, max_tokens)
    gen = Generation(state, request, prompt, params, body.stop_strings(), arrival_s)
    await gen.start()
    rid = p.new_id("chatcmpl" if chat else "cmpl")
    if body.stream:
        return StreamingResponse(sse_events(state, gen, rid, chat, body.include_usage()),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        pieces = [piece async for piece in gen.pieces(request)]
    except ClientGone:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    finally:
        gen.close()
    text = "".join(x.text for x in pieces)
    make = p.chat_response if chat else p.completion_response
    return make(rid, state.model_name, text, [x.token_id for x in pieces], pieces[-1].finish_reason,
                pieces[-1].stop_reason, len(prompt))


def sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def sse_events(state: ServeState, gen: Generation, rid: str, chat: bool, include_usage: bool):
    """The SSE body: one chunk per token, then usage if asked for, then [DONE]. If the client goes
    away, the server cancels this generator at its await and `finally` aborts the request."""
    created, model = int(time.time()), state.model_name
    first = True
    try:
        async for piece in gen.pieces():
            if chat:
                delta = {"role": "assistant", "content": piece.text} if first else {"content": piece.text}
                chunk = p.chat_chunk(rid, model, created, delta, [piece.token_id], piece.finish_reason,
                                     piece.stop_reason, include_usage)
            else:
                chunk = p.completion_chunk(rid, model, created, piece.text, [piece.token_id], piece.finish_reason,
                                           piece.stop_reason, include_usage)
            first = False
            yield sse(chunk)
        if include_usage:
            yield sse(p.usage_chunk(rid, model, created, "chat.completion.chunk" if chat else "text_completion",
                                    len(gen.prompt), gen.num_tokens))
    except ApiError as e:  # the engine stopped mid-stream: tell the client in the stream
        yield sse({"error": {"message": e.message, "type": ERROR_TYPES.get(e.status, "Error"), "param": e.param,
                             "code": e.status}})
    finally:
        gen.close()
    yield "data: [DONE]\n\n"
