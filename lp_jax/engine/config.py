"""Engine options: paging, batching limits, the schedule's knobs, and the shape-bucket ladder."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import jax.numpy as jnp

from lp_jax.model.config import ModelConfig, ceil_div
from lp_jax.model.routing import UNIFORM, get_profile
from lp_jax.parallel.layout import check_parallel

SCHEDULES = ("prefill_first", "chunked", "layered")
GROUP_RULES = ("linear", "pow2", "adaptive")
DTYPES = ("float32", "bfloat16", "float16")  # what the weights, activations and KV pools may be
# Options that no longer exist -> what replaced them.
REMOVED_OPTIONS = {
    "max_num_batched_tokens": "max_num_batched_tokens was split in two: max_prefill_tokens (prefill_first's "
                              "prefill tokens per iteration) and max_cohort_tokens (layered's cohort cap); "
                              "max_num_batched_tokens=N meant both =N",
}


def check_removed_options(names) -> None:
    """ValueError for an option name that no longer exists, saying what replaced it."""
    for name in names:
        if name in REMOVED_OPTIONS:
            raise ValueError(REMOVED_OPTIONS[name])


@dataclass(frozen=True)
class EngineConfig:
    """Options of one engine. Token counts are in tokens, sizes in pages unless named otherwise.

    page_size: tokens per KV page. num_pages: pages in each layer's pool, including the one
        reserved trash page that padding rows write to (None = size from memory, see kv_cache).
    max_model_len: longest sequence (prompt + output) a request may reach.
    max_num_seqs: running requests (decoding or prefilling) at once.
    max_prefill_tokens: prefill_first's prefill tokens per iteration (a prompt longer than it is
        prefilled alone, in chunks of this size).
    max_cohort_tokens: layered's cohort cap, the most prompt tokens a cohort of several prompts
        holds.
    max_lone_prompt_tokens: layered's longest prompt that passes the layers once: a prompt above
        max_cohort_tokens is prefilled alone, in G = ceil(tokens / group_tokens) groups (at most
        L), every layer seeing all its tokens in one call; a longer one in chunks of this size,
        each through every group. None (default) = L x group_tokens (within the context length
        and, with explicit row_buckets, what their largest carries beside max_num_seqs decodes),
        resolved by `for_model`: every expert is read once per prompt up to that length, the
        point of layered prefill, at the cost of a hidden buffer and one call's activations of
        that many rows (checked by the memory plan). = max_cohort_tokens reproduces the paper,
        which chunks every prompt above its 8192-token cap.
    token_budget: chunked prefill's tokens per iteration, decodes included (Sarathi-Serve).
    group_tokens / group_rule: layered's G = max(1, ceil(cohort tokens / group_tokens))
        ("linear") or the power-of-two table <=512:1, <=1024:2, <=2048:4, <=4096:8, else 16
        ("pow2"); num_groups fixes G (tests use it to force several groups on short prompts).
        "adaptive": no fixed G; each iteration a cohort runs through as many layers from where it
        stands as keep the cost model's predicted time of the iteration (its decodes included)
        within iteration_target_s, at least one (uneven groups, sized at run time). Needs a cost
        model: the simulator's, or for the real executor the model's committed cost table.
    iteration_target_s: adaptive's bound on an iteration's predicted device time, seconds (set it
        below the TBT SLO: the host's work and the model's error come on top).
    pipelined: layered only: a new cohort may enter the first layers while earlier ones are still
        in later groups (each keeps the layer-once property); the oldest cohort always advances,
        later ones and a new one only within the iteration's budget (adaptive: the predicted time
        within iteration_target_s; otherwise pipeline_budget).
    group_stages: layered with a fixed G rule: groups never span the bounds of this many equal
        pipeline stages (even_split(L, group_stages); the vLLM port's design, each stage running
        its own groups): each stage's layers are split into ceil(G / group_stages) groups. 1
        (default): G groups over all the layers, wherever they fall.
    pipeline_budget: pipelined layered with a fixed G rule: prompt-token x layer products the
        prefill rows of one iteration may take (the oldest cohort's group always runs); None =
        2 x group_tokens x layers (twice what one full linear-rule group takes).
    row_buckets: the ladder token rows are padded to (None = derived from the limits).
    routing: how an MoE layer chooses its experts (`lp_jax.model.routing`): "uniform", the
        model's own router (near uniform with random weights; checkpoints always route so), or a
        calibrated profile ("qwen3-paper": the paper's measured expert coverage), whose ids are
        drawn per request, layer and position while the router's logits still weight them.
    compiler_options: XLA options the step functions are compiled with, as (name, value) pairs
        (e.g. (("xla_gpu_enable_dynamic_slice_fusion", True),)); part of the executables' key.
    tp / ep: tensor parallelism (attention heads, KV pools and each expert's hidden dim split over
        tp devices) and expert parallelism (experts spread over ep devices); tp x ep must equal
        the devices JAX sees, over all processes (see lp_jax.parallel), and divide the model's
        heads, KV heads, expert hidden size and experts.
    """

    schedule: str = "layered"
    page_size: int = 16
    num_pages: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 64
    max_prefill_tokens: int = 8192
    max_cohort_tokens: int = 8192
    max_lone_prompt_tokens: int | None = None
    token_budget: int = 512
    group_tokens: int = 512
    group_rule: str = "linear"
    num_groups: int | None = None
    iteration_target_s: float = 0.1
    pipelined: bool = False
    pipeline_budget: int | None = None
    group_stages: int = 1
    seed: int = 0
    dtype: str | None = None
    row_buckets: tuple[int, ...] | None = None
    routing: str = UNIFORM
    kv_memory_fraction: float = 0.9
    compiler_options: tuple[tuple[str, bool | int | float | str], ...] = ()
    tp: int = 1
    ep: int = 1

    def __new__(cls, *args, **kwargs):
        # A removed option is refused by name, with what replaced it, rather than with the
        # TypeError of an unknown keyword.
        check_removed_options(kwargs)
        return super().__new__(cls)

    def __post_init__(self):
        """ValueError naming the field and its valid range for any option that cannot work (what
        needs the model, num_groups and max_model_len against it, is `check_model`'s)."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        get_profile(self.routing)  # ValueError naming the known profiles
        if self.group_rule not in GROUP_RULES:
            raise ValueError(f"unknown group_rule {self.group_rule!r}; choose one of {', '.join(GROUP_RULES)}")
        for name in ("page_size", "max_num_seqs", "max_prefill_tokens", "max_cohort_tokens", "token_budget",
                     "group_tokens"):
            _check_int(name, getattr(self, name), 1)
        for name, low, why in (("num_pages", 2, " (one is the reserved trash page)"), ("max_model_len", 1, ""),
                               ("num_groups", 1, ""), ("pipeline_budget", 1, "")):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low, why + " or None")
        _check_int("seed", self.seed, 0)
        for name in ("tp", "ep"):
            _check_int(name, getattr(self, name), 1, " (devices)")
        if not isinstance(self.pipelined, bool):
            raise ValueError(f"pipelined must be True or False, got {self.pipelined!r}")
        if isinstance(self.iteration_target_s, bool) or not isinstance(self.iteration_target_s, numbers.Real) \
                or not self.iteration_target_s > 0:
            raise ValueError(f"iteration_target_s must be a number of seconds > 0, got {self.iteration_target_s!r}")
        if self.schedule != "layered" and (self.pipelined or self.group_rule == "adaptive"):
            raise ValueError(f"pipelined and group_rule='adaptive' are layered's; schedule is {self.schedule!r}")
        _check_int("group_stages", self.group_stages, 1)
        if self.group_stages > 1 and (self.schedule != "layered" or self.group_rule == "adaptive"):
            raise ValueError(f"group_stages cuts a fixed G rule's layered groups at stage bounds; schedule is "
                             f"{self.schedule!r}, group_rule {self.group_rule!r}")
        if self.group_rule == "adaptive" and self.num_groups is not None:
            raise ValueError("num_groups fixes G; group_rule='adaptive' sizes groups at run time: give one of them")
        if self.dtype is not None and _dtype_name(self.dtype) not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)} or None (bfloat16 "
                             "on a GPU, float32 elsewhere)")
        if self.row_buckets is not None:
            if not isinstance(self.row_buckets, (tuple, list)) or not self.row_buckets:
                raise ValueError(f"row_buckets must be a non-empty tuple of row counts >= 1 or None, got "
                                 f"{self.row_buckets!r}")
            for b in self.row_buckets:
                _check_int("row_buckets entry", b, 1)
            object.__setattr__(self, "row_buckets", tuple(int(b) for b in self.row_buckets))  # hashable
        if isinstance(self.kv_memory_fraction, bool) or not isinstance(self.kv_memory_fraction, numbers.Real) \
                or not 0 < self.kv_memory_fraction <= 1:
            raise ValueError(f"kv_memory_fraction must be in (0, 1], got {self.kv_memory_fraction!r}")
        if not isinstance(self.compiler_options, tuple) or not all(
                isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], str) for o in self.compiler_options):
            raise ValueError("compiler_options must be a tuple of (name, value) pairs, got "
                             f"{self.compiler_options!r}")
        if self.max_lone_prompt_tokens is not None:
            _check_int("max_lone_prompt_tokens", self.max_lone_prompt_tokens, 1, " or None")
            if self.max_lone_prompt_tokens < self.max_cohort_tokens:
                raise ValueError(f"max_lone_prompt_tokens ({self.max_lone_prompt_tokens}) must be >= max_cohort_tokens "
                                 f"({self.max_cohort_tokens}): a lone prompt is never cut below the cohort cap")
        if self.schedule == "chunked" and self.token_budget <= self.max_num_seqs:
            # Decodes take one budget token each; a budget they can fill would starve prefill.
            raise ValueError(f"token_budget ({self.token_budget}) must exceed max_num_seqs "
                             f"({self.max_num_seqs}) so that prefill can always advance")

    def model_len(self, model: ModelConfig) -> int:
        return min(self.max_model_len or model.max_position_embeddings, model.max_position_embeddings)

    def check_model(self, model: ModelConfig) -> None:
        """ValueError for options this model cannot take: num_groups above its layer count (a
        group holds at least one layer), max_model_len beyond its position embeddings, a calibrated
        routing profile on a dense model (it has no experts to choose), a tp x ep
        that does not divide its heads or experts (whether it matches the devices is the real
        executor's question, `lp_jax.parallel.check_devices`; a simulated engine has none)."""
        if not model.is_moe and not get_profile(self.routing).uses_router:
            raise ValueError(f"routing={self.routing!r} chooses experts, but {model.name} is a dense model "
                             f"(no experts); use routing={UNIFORM!r}")
        if self.num_groups is not None and self.num_groups > model.num_layers:
            raise ValueError(f"num_groups must be in [1, {model.num_layers}] ({model.name} has {model.num_layers} "
                             f"layers), got {self.num_groups}")
        if self.max_model_len is not None and self.max_model_len > model.max_position_embeddings:
            raise ValueError(f"max_model_len must be in [1, {model.max_position_embeddings}] ({model.name}'s "
                             f"position embeddings), got {self.max_model_len}")
        check_parallel(model, self.tp, self.ep)

    def for_model(self, model: ModelConfig) -> "EngineConfig":
        """These options with the model's defaults resolved (max_lone_prompt_tokens)."""
        if self.max_lone_prompt_tokens is not None:
            return self
        lone = min(model.num_layers * self.group_tokens, self.model_len(model))
        if self.row_buckets:
            lone = min(lone, max(self.row_buckets) - self.max_num_seqs)
        return dataclasses.replace(self, max_lone_prompt_tokens=max(self.max_cohort_tokens, lone))

    @property
    def lone_prompt_tokens(self) -> int:
        """max_lone_prompt_tokens, or max_cohort_tokens where it is unresolved (see for_model)."""
        return self.max_lone_prompt_tokens or self.max_cohort_tokens

    def pipeline_token_layers(self, num_layers: int) -> int:
        """pipeline_budget resolved: prompt-token x layer products one iteration's prefill may take."""
        return self.pipeline_budget or 2 * self.group_tokens * num_layers

    def pages_per_seq(self, model: ModelConfig) -> int:
        return ceil_div(self.model_len(model), self.page_size)

    def hidden_rows(self) -> int:
        """Rows of the executor's hidden buffer: max_num_seqs decode rows, then the prefill region,
        then one trash row for padding rows. The prefill region holds the most prefill rows one
        iteration of any schedule can write: max(token_budget (chunked), max_prefill_tokens
        (prefill_first), max_cohort_tokens and lone_prompt_tokens (layered)). It is taken over
        every schedule, not only this one, so that engines that differ only in schedule have the
        same buffer and share executables; a layered cohort's rows stay in it between iterations.
        Pipelined layered doubles the region: cohorts in flight at once hold disjoint rows of it, so
        a new cohort can enter beside a full-size one."""
        region = max(self.token_budget, self.max_prefill_tokens, self.max_cohort_tokens, self.lone_prompt_tokens)
        return self.max_num_seqs + region * (2 if self.pipelined else 1) + 1

    def max_rows(self) -> int:
        """Most token rows one call of this schedule can carry (chunked's budget counts its
        decodes; prefill_first runs prefill and decodes in different iterations)."""
        if self.schedule == "chunked":
            return self.token_budget
        if self.schedule == "prefill_first":
            return max(self.max_prefill_tokens, self.max_num_seqs)
        return self.lone_prompt_tokens + self.max_num_seqs

    def buckets(self) -> tuple[int, ...]:
        """Row-count ladder: powers of two from 8, the decode batch (max_num_seqs), a full layered
        cohort with its decodes and max_rows, dropping a power of two within 1/8 below one of
        those (its bucket would cost at most 14% less).

        Each bucket compiles a whole-model step (10-20 s at full size on the GPU), so the ladder is
        short: up to ~max_num_seqs rows an iteration is weight-bandwidth bound and padding rows
        cost little; above, padding costs compute, but mixed iterations mostly sit at the limits
        (a chunk fills its budget, a loaded cohort its cap), which are buckets of their own.
        Defaults: layered 8..4096, 8256 (11 buckets; resolved for Qwen3-30B-A3B's lone prompts of
        up to 24576 tokens, 8..4096, 8256, 16384, 24640: 13); chunked 8..512 (7); prefill_first
        8..4096, 8192 (11)."""
        if self.row_buckets:
            ladder = sorted(set(self.row_buckets))
            if ladder[-1] < self.max_rows():
                lone = (f" (a lone prompt of up to max_lone_prompt_tokens={self.lone_prompt_tokens} tokens passes "
                        "the layers in one call per group; lower it to chunk long prompts)"
                        if self.schedule == "layered" and self.lone_prompt_tokens > self.max_cohort_tokens else "")
                raise ValueError(f"row_buckets end at {ladder[-1]} < max rows {self.max_rows()}{lone}")
            return tuple(ladder)
        top = self.max_rows()
        fixed = {self.max_num_seqs, top}
        if self.schedule == "layered":
            fixed.add(self.max_cohort_tokens + self.max_num_seqs)
        ladder, b = set(fixed), 8
        while b < top:
            if not any(b <= f and 7 * f <= 8 * b for f in fixed):
                ladder.add(b)
            b *= 2
        return tuple(sorted(ladder))

    def seq_buckets(self) -> tuple[int, ...]:
        """Ladder for the number of rows sampled in one iteration (<= max_num_seqs): powers of
        two from 8 (sampling a few padded rows costs little; each bucket costs a compilation)."""
        ladder, b = [], 8
        while b < self.max_num_seqs:
            ladder.append(b)
            b *= 2
        return tuple(ladder + [self.max_num_seqs])

    def num_groups_for(self, cohort_tokens: int, num_layers: int) -> int:
        """G for a layered cohort of `cohort_tokens` prompt tokens (at most the layer count); the
        fixed rules only (adaptive sizes each group at run time)."""
        if self.group_rule == "adaptive":
            raise ValueError("group_rule='adaptive' has no G per cohort: its groups are sized at run time")
        if self.num_groups is not None:
            g = self.num_groups
        elif self.group_rule == "linear":
            g = max(1, math.ceil(cohort_tokens / self.group_tokens))
        else:
            g = next((g for limit, g in ((512, 1), (1024, 2), (2048, 4), (4096, 8)) if cohort_tokens <= limit), 16)
        return min(g, num_layers)


# The options that only steer a schedule (the host's scheduler): engines whose options differ in
# these alone can serve on one executor (one set of weights, KV pool and executables).
SCHEDULE_OPTIONS = ("schedule", "max_prefill_tokens", "max_cohort_tokens", "max_lone_prompt_tokens", "token_budget",
                    "group_tokens", "group_rule", "num_groups", "iteration_target_s", "pipelined", "pipeline_budget",
                    "group_stages", "row_buckets")


def shared_executor_config(configs: list[EngineConfig]) -> EngineConfig:
    """The options of one executor that can serve every one of `configs` in turn (see
    `Engine.reconfigure`): their row-bucket ladders joined (a ladder with more rungs pads no
    call more than its own would), prefill limits at their largest (the hidden buffer holds
    every schedule's prefill rows), and layered's range steps compiled when any is layered.
    ValueError naming the option when two configs differ in one that shapes the executor
    (anything outside SCHEDULE_OPTIONS: page size, pages, context, batch, dtype, seed, ...)."""
    if not configs:
        raise ValueError("no engine configurations to share an executor between")
    first = configs[0]
    for c in configs[1:]:
        for name in EngineConfig.__dataclass_fields__:
            if name not in SCHEDULE_OPTIONS and getattr(c, name) != getattr(first, name):
                raise ValueError(f"configurations of one executor must agree on {name}: {getattr(first, name)!r} "
                                 f"({first.schedule}) vs {getattr(c, name)!r} ({c.schedule}); only "
                                 f"{', '.join(SCHEDULE_OPTIONS)} may differ")
    schedules = [c.schedule for c in configs]
    schedule = next(s for s in ("layered", "prefill_first", "chunked") if s in schedules)
    widest = {name: max(getattr(c, name) for c in configs)
              for name in ("max_prefill_tokens", "max_cohort_tokens", "token_budget")}
    # A lone layered prompt's limit: the largest one set, else left for for_model to resolve.
    lone = [c.max_lone_prompt_tokens for c in configs if c.max_lone_prompt_tokens is not None]
    widest["max_lone_prompt_tokens"] = max(lone) if lone else None
    widest["pipelined"] = any(c.pipelined for c in configs)  # its doubled hidden region
    ladder = tuple(sorted({b for c in configs for b in c.buckets()}))
    return dataclasses.replace(first, schedule=schedule, row_buckets=ladder, **widest)


def check_shares_executor(executor: EngineConfig, config: EngineConfig) -> None:
    """ValueError unless an executor built with `executor`'s options can serve `config`: equal
    in every option outside SCHEDULE_OPTIONS, its hidden buffer and bucket ladder large enough,
    its layer-range steps there if config is layered."""
    for name in EngineConfig.__dataclass_fields__:
        if name not in SCHEDULE_OPTIONS and getattr(config, name) != getattr(executor, name):
            raise ValueError(f"{name}={getattr(config, name)!r} differs from the executor's {getattr(executor, name)!r}: "
                             "only the schedule's own options can change on one executor")
    if config.hidden_rows() > executor.hidden_rows():
        raise ValueError(f"the {config.schedule} configuration needs {config.hidden_rows()} hidden rows, the "
                         f"executor has {executor.hidden_rows()}")
    if config.max_rows() > executor.buckets()[-1]:
        raise ValueError(f"the {config.schedule} configuration runs up to {config.max_rows()} rows a call, the "
                         f"executor's largest bucket is {executor.buckets()[-1]}")
    if config.schedule == "layered" and executor.schedule != "layered":
        raise ValueError("a layered configuration needs an executor built for layered (its layer-range steps)")


def _check_int(name: str, value, low: int, also: str = "") -> None:
    """ValueError unless value is an integer (any integral type, not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{also}, got {value!r}")


def _dtype_name(dtype) -> str | None:
    """The dtype's name ("bfloat16"), or None for something that names no dtype."""
    try:
        return jnp.dtype(dtype).name
    except TypeError:
        return None


def bucket_for(n: int, ladder: tuple[int, ...]) -> int:
    """Smallest ladder entry >= n."""
    for b in ladder:
        if b >= n:
            return b
    raise ValueError(f"{n} rows exceed the largest bucket {ladder[-1]}")
