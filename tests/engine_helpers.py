"""Shared pieces of the engine tests: a cached random model, an independent greedy decoder over
`reference_logits`, and a driver that feeds requests to an engine at chosen iterations (mixed
arrival times)."""

from __future__ import annotations

import functools

import jax
import numpy as np

from lp_jax.model import init_params, reference_forward
from lp_jax.model.config import ModelConfig, get_preset


@functools.cache
def preset_model(name: str, seed: int) -> tuple[ModelConfig, dict]:
    """(config, float32 random weights) of a preset, made once per process."""
    cfg = get_preset(name)
    return cfg, init_params(cfg, seed=seed)


@functools.cache
def _jitted_reference(config: ModelConfig, length: int):
    return jax.jit(lambda params, tokens: reference_forward(config, params, tokens))


def _reference_forward(config: ModelConfig, params, tokens: list[int], length: int):
    """(logits [T, V], routing ids per layer [T, K]) of `tokens` through the reference forward,
    right-padded to `length` so that one compilation serves every sequence; causal attention
    makes the padding invisible to the real positions."""
    padded = np.zeros(length, np.int32)
    padded[:len(tokens)] = tokens
    logits, routing = _jitted_reference(config, length)(params, padded)
    return np.asarray(logits)[:len(tokens)], [np.asarray(ids)[:len(tokens)] for ids in routing]


def reference_routing(config: ModelConfig, params, tokens: list[int], length: int) -> np.ndarray:
    """Expert ids [L, T, K] the reference forward routes each token of `tokens` to."""
    return np.stack(_reference_forward(config, params, tokens, length)[1])


def reference_greedy(config: ModelConfig, params, prompt: list[int], num_tokens: int, length: int,
                     draft: list[int] = ()) -> list[int]:
    """The greedy decoding of `prompt` by the reference forward: token i is the argmax of the
    logits at the last position of prompt + tokens[:i], the whole sequence recomputed.

    `draft` (e.g. an engine's output) only saves forwards, never changes the result: one forward
    of prompt + tokens + the draft's remaining tokens gives the logits after each of them, and
    the tokens are taken from it up to the first that differs from the draft (the positions
    after it saw a wrong prefix). With a right draft that is one forward for all num_tokens."""
    out: list[int] = []
    while len(out) < num_tokens:
        ahead = list(draft[len(out):num_tokens - 1]) if list(draft[:len(out)]) == out else []
        start = len(prompt) + len(out) - 1  # the position whose logits give the next token
        logits, _ = _reference_forward(config, params, list(prompt) + out + ahead, length)
        for i in range(len(ahead) + 1):
            out.append(int(np.argmax(logits[start + i])))
            if i == len(ahead) or out[-1] != ahead[i]:
                break
    return out


def run_with_arrivals(llm, prompts, arrival_steps, **request_kwargs):
    """Add prompt i when the engine has run arrival_steps[i] iterations; step until all finish.

    Returns the outputs in prompt order."""
    order = sorted(range(len(prompts)), key=lambda i: arrival_steps[i])
    ids, done, step, k = {}, {}, 0, 0
    while k < len(order) or llm.has_unfinished():
        while k < len(order) and arrival_steps[order[k]] <= step:
            i = order[k]
            ids[llm.add_request(prompts[i], **request_kwargs)] = i
            k += 1
        for out in llm.step():
            done[ids[out.request_id]] = out
        step += 1
    return [done[i] for i in range(len(prompts))]


def drain_and_check_aborted(llm, aborted: set, ids: list, expected) -> None:
    """Step `llm` until nothing is left; no request in `aborted` may finish, every other request
    ids[i] must give the tokens expected(i), and every KV page must be free afterwards."""
    done = {}
    while llm.has_unfinished():
        for out in llm.step():
            done[out.request_id] = out
    assert aborted.isdisjoint(done)
    for i, rid in enumerate(ids):
        if rid not in aborted:
            assert done[rid].token_ids == expected(i), rid
    assert llm.engine.blocks.all_free()
