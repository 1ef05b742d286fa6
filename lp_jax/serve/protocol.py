"""The OpenAI API's request bodies (pydantic, strict types) and the response shapes vLLM's server
writes and its clients read (plain dicts).

Fields the engine cannot honour are refused with a 400 naming them when they ask for something
(n > 1, logprobs, echo, penalties, tools, ...), rather than silently ignored; fields that change
nothing (user, an explicit n=1, ...) are accepted. Unknown fields are ignored, as OpenAI's own
server and vLLM do.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

StrictFloat = Annotated[float, Field(strict=True)]  # accepts ints and floats, not strings
TokenIds = list[StrictInt]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool = True  # vLLM's default once stream_options is given


class SamplingFields(BaseModel):
    """What completions and chat share."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr | None = None
    temperature: StrictFloat | None = None
    top_p: StrictFloat | None = None
    top_k: StrictInt | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: TokenIds | None = None
    ignore_eos: StrictBool = False
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    # Accepted only at the value that asks for nothing (see `unsupported`).
    n: StrictInt = 1
    best_of: StrictInt | None = None
    presence_penalty: StrictFloat = 0.0
    frequency_penalty: StrictFloat = 0.0
    repetition_penalty: StrictFloat = 1.0
    min_tokens: StrictInt = 0
    logit_bias: dict | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# field -> the values that ask for nothing
NEUTRAL = {"n": (1,), "best_of": (None, 1), "presence_penalty": (0.0,), "frequency_penalty": (0.0,),
           "repetition_penalty": (1.0,), "min_tokens": (0,), "logit_bias": (None, {}), "echo": (False,),
           "logprobs": (None, False), "top_logprobs": (None, 0), "suffix": (None, ""), "tools": (None, []),
           "tool_choice": (None, "none", "auto"), "response_format": (None, {"type": "text"})}


def unsupported(request: BaseModel) -> str | None:
    """The first field that asks for something lp-jax does not do, or None."""
    for name, neutral in NEUTRAL.items():
        if name in type(request).model_fields and getattr(request, name) not in neutral:
            return name
    return None


class CompletionRequest(SamplingFields):
    prompt: StrictStr | TokenIds | list[StrictStr] | list[TokenIds]
    max_tokens: StrictInt | None = 16
    echo: StrictBool = False
    logprobs: StrictInt | None = None
    suffix: StrictStr | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... reach the template
    role: StrictStr
    content: StrictStr | list[TextPart] | None = None

    def as_template_input(self) -> dict:
        content = self.content
        if isinstance(content, list):  # OpenAI's content parts: text only
            content = "".join(p.text for p in content)
        return self.model_dump(exclude={"content"}) | {"content": content or ""}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    add_generation_prompt: StrictBool = True
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    tools: list | None = None
    tool_choice: Union[StrictStr, dict, None] = None
    response_format: dict | None = None


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: a completion prompt or chat messages."""

    model_config = ConfigDict(extra="ignore")
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: StrictBool | None = None
    add_generation_prompt: StrictBool = True
    return_token_strs: StrictBool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: StrictStr | None = None
    tokens: TokenIds


# --- responses ---------------------------------------------------------------------------------

def new_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_chunk(rid: str, model: str, created: int, text: str, token_ids: list[int],
                     finish_reason: str | None = None, stop_reason=None, with_usage_field: bool = False) -> dict:
    return _chunk(rid, "text_completion", model, created, {"text": text}, token_ids, finish_reason, stop_reason,
                  with_usage_field)


def chat_chunk(rid: str, model: str, created: int, delta: dict, token_ids: list[int],
               finish_reason: str | None = None, stop_reason=None, with_usage_field: bool = False) -> dict:
    return _chunk(rid, "chat.completion.chunk", model, created, {"delta": delta}, token_ids, finish_reason,
                  stop_reason, with_usage_field)


def _chunk(rid, obj, model, created, content: dict, token_ids, finish_reason, stop_reason, with_usage_field) -> dict:
    chunk = {"id": rid, "object": obj, "created": created, "model": model,
             "choices": [{"index": 0, **content, "logprobs": None, "finish_reason": finish_reason,
                          "stop_reason": stop_reason, "token_ids": token_ids}]}
    if with_usage_field:
        chunk["usage"] = None  # OpenAI's shape when include_usage is on: null until the last chunk
    return chunk


def usage_chunk(rid: str, model: str, created: int, obj: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def completion_response(rid: str, model: str, text: str, token_ids: list[int], finish_reason: str, stop_reason,
                        prompt_tokens: int) -> dict:
    return _response(rid, "text_completion", model, {"text": text}, token_ids, finish_reason, stop_reason,
                     prompt_tokens)


def chat_response(rid: str, model: str, text: str, token_ids: list[int], finish_reason: str, stop_reason,
                  prompt_tokens: int) -> dict:
    return _response(rid, "chat.completion", model, {"message": {"role": "assistant", "content": text}}, token_ids,
                     finish_reason, stop_reason, prompt_tokens)


def _response(rid, obj, model, content: dict, token_ids, finish_reason, stop_reason, prompt_tokens) -> dict:
    choice = {"index": 0, **content, "logprobs": None, "finish_reason": finish_reason, "stop_reason": stop_reason,
              "token_ids": token_ids}
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice],
            "usage": usage(prompt_tokens, len(token_ids))}


def model_card(name: str, max_model_len: int, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "lp-jax", "root": name, "parent": None,
            "max_model_len": max_model_len, "permission": []}
