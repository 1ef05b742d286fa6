"""A request's state machine, sampling parameters and per-token timestamps.

    WAITING --admit--> PREFILLING (at group g of a layered cohort, or after chunk c)
    PREFILLING --last prompt token through the last layer--> DECODING (first token emitted)
    DECODING --max_tokens or stop token--> FINISHED
    PREFILLING / DECODING --KV pages run out--> WAITING (preempted; recomputed later, nothing lost)
    any unfinished state --abort--> CANCELLED
    (add_request) --invalid or can never fit--> REJECTED (a ValueError is raised instead)

Times are seconds on the engine's clock (time.perf_counter by default).
"""

from __future__ import annotations

import enum
import numbers
from dataclasses import dataclass, field


class Status(str, enum.Enum):
    WAITING = "waiting"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def done(self) -> bool:
        return self in (Status.FINISHED, Status.CANCELLED, Status.REJECTED)


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 disable those filters; seed None derives
    one from the engine seed and the request id."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self):
        # Any integral value (numpy's included, as prompts take them) becomes an int, so that it
        # hashes, prints and serialises as one; bools and floats stay as given, for validate to refuse.
        for name in ("max_tokens", "top_k", "seed"):
            if _integral(getattr(self, name)):
                object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "stop_token_ids",
                           tuple(int(t) if _integral(t) else t for t in self.stop_token_ids))

    def validate(self, vocab_size: int) -> None:
        if not _integral(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not _real(self.temperature) or not 0.0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not _real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _integral(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and (not _integral(self.seed) or self.seed < 0):
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        for t in self.stop_token_ids:
            if not _integral(t) or not 0 <= t < vocab_size:
                raise ValueError(f"stop token id {t!r} is outside the vocabulary [0, {vocab_size})")


def _integral(x) -> bool:
    """An integer of any integral type (int, numpy integers), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _real(x) -> bool:
    """A real number (int, float, numpy's), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _as_list(tokens) -> list[int]:
    """A prompt (a list of ints, or a 1-D integer numpy array) as a new list of ints."""
    return tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)


@dataclass
class Request:
    request_id: int
    prompt: list[int]  # or a read-only 1-D integer numpy array (Engine.validate keeps arrays as given)
    params: SamplingParams
    arrival_s: float
    seed: int
    status: Status = Status.WAITING
    output: list[int] = field(default_factory=list)
    token_times_s: list[float] = field(default_factory=list)
    scheduled_s: float | None = None  # first time any of its work ran
    finished_s: float | None = None
    finish_reason: str | None = None  # "length", "stop", "abort"
    # Progress: tokens of `tokens` whose K/V are in the cache; target of the current prefill.
    num_computed: int = 0
    prefill_target: int = 0
    num_preemptions: int = 0
    # Expert-weight traffic attributed to it (bytes): distinct experts x bytes per expert (the
    # paper's metric), and what the grouped matmul streams (row tiles x bytes per expert).
    expert_bytes: float = 0.0
    expert_streamed_bytes: float = 0.0
    routing_seed: int = 0  # draws its expert ids under a calibrated routing profile
    # Tokens sampled by an iteration still in flight (not yet read back, so not in `output`).
    num_pending: int = 0

    @property
    def tokens(self) -> list[int]:
        """Prompt followed by the generated tokens: what the KV cache must hold."""
        return _as_list(self.prompt) + self.output

    @property
    def num_tokens(self) -> int:
        """len(tokens), without building the list."""
        return len(self.prompt) + len(self.output)

    def token_at(self, position: int) -> int:
        """tokens[position], without building the whole list."""
        n = len(self.prompt)
        return int(self.prompt[position]) if position < n else self.output[position - n]

    def tokens_between(self, start: int, end: int) -> list[int]:
        """tokens[start:end], without building the whole list."""
        n = len(self.prompt)
        if end <= n:
            return _as_list(self.prompt[start:end])
        return _as_list(self.prompt[start:n]) + self.output[max(start - n, 0):end - n]

    @property
    def max_len(self) -> int:
        return len(self.prompt) + self.params.max_tokens

    def start_prefill(self) -> None:
        """Admit for prefill: compute K/V of all its tokens (after a preemption, the outputs too)."""
        self.status = Status.PREFILLING
        self.prefill_target = self.num_tokens


@dataclass
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    status: str
    finish_reason: str | None
    arrival_s: float
    token_times_s: list[float]
    expert_bytes: float  # distinct experts x bytes per expert (see Request)
    num_preemptions: int
    expert_streamed_bytes: float  # row tiles x bytes per expert (see Request)

    @staticmethod
    def of(req: Request) -> "RequestOutput":
        return RequestOutput(req.request_id, _as_list(req.prompt), list(req.output), req.status.value,
                             req.finish_reason, req.arrival_s, list(req.token_times_s), req.expert_bytes,
                             req.num_preemptions, req.expert_streamed_bytes)
