"""The physical work of a layer-range call: bytes and FLOPs per layer, from the rows of a plan.

What a call does depends on the kernels (`backend`):

- "pallas" (Hopper): paged attention reads each sequence's visible keys (its context, or the
  window on sliding layers) and computes QK^T and PV over (row, visible key) pairs; the grouped
  MoE matmuls read each loaded expert's weights from HBM once (`ExpertLoad.expected_distinct`)
  and compute whole row tiles (`expected_tiles` x block_m rows, block_m from the kernel's tile
  table: a tile computes block_m rows whether or not its expert has that many; padding rows are
  routed nowhere).
- "reference" (pure jnp, the CPU): attention gathers every slot of each row's block table
  (max_model_len keys per row, padding rows included; the window is only a mask), and XLA's CPU
  ragged_dot computes every expert for every routed row (rows x K x E), so neither depends on the
  context or on routing.

Dense work (attention projections, norms, router, a dense model's MLP) reads the layer's dense
weights once and computes every padded row. Units: bytes, FLOPs, rows.
"""

from __future__ import annotations

import functools

from lp_jax.model.config import ModelConfig
from lp_jax.sim.cost_model import LayerWork
from lp_jax.sim.expert_load import ExpertLoad

# Query tokens of a prefill tile in tables fitted before the kernel's own tile was used (see
# kernel_prefill_q_tile): the attention kernel reads a tile's visible keys once per tile.
PREFILL_Q_TILE = 64
LAYER_TYPES = ("full", "sliding")


def kernel_block_m(model: ModelConfig, device_kind: str):
    """rows -> the row tile (block_m) the Pallas MoE kernels choose on `device_kind` for a call of
    that many routed rows. Their tile table is keyed by the rows' power-of-two bucket, so that is
    what is cached."""
    from pallas_kernels.moe_tuning import lookup

    cache: dict[int, int] = {}

    def block_m(rows: int) -> int:
        key = 1 << max(rows - 1, 0).bit_length()
        if key not in cache:
            cache[key] = lookup(model.num_experts, model.hidden_size, model.ffn_size, key, device_kind).gate_up.block_m
        return cache[key]

    return block_m


def kernel_prefill_q_tile(model: ModelConfig, device_kind: str) -> int:
    """Query tokens of one prefill tile of the Pallas attention kernel on `device_kind` (its tile
    table's prefill entry, or its default: 16 on Hopper for 8 query heads per KV head); what a
    new cost table records as its `prefill_q_tile`."""
    from pallas_kernels.attention_tuning import lookup

    return lookup(model.num_heads, model.num_kv_heads, model.head_dim, 8192, 1, device_kind).block_q


ATTENTION_CTAS = 132  # the paged-attention kernel's persistent grid on an H100 / H200 (one CTA per SM)
MAX_KEY_SPLITS = 16  # pallas_kernels.paged_attention.MAX_SPLITS


def key_splits(rows: int, kv_heads: int) -> int:
    """Key-range splits per work unit the attention kernel picks for a call of `rows` padded rows
    (pallas_kernels.paged_attention.num_splits with its tiles bounded by the rows): as many as
    bring (tiles x KV heads) up to the CTAs, 1 from 33 rows on at 4 KV heads."""
    return max(1, min(MAX_KEY_SPLITS, ATTENTION_CTAS // (rows * kv_heads)))


def visible_pairs(start: int, end: int, window: int | None) -> int:
    """Sum over positions p in [start, end) of the keys p sees: min(p + 1, window)."""
    def upto(x):  # sum_{p < x} min(p + 1, W)
        if window is None or x <= window:
            return x * (x + 1) // 2
        return window * (window + 1) // 2 + (x - window) * window
    return upto(end) - upto(start)


class WorkModel:
    """Bytes and FLOPs of the calls of one model (dtype_bytes per weight / KV element) on one backend.

    page_slots: keys a block table addresses (pages_per_seq x page_size), what the reference
    attention gathers per row. block_m(rows): the MoE kernel's row tile for a call of `rows`
    routed rows (pallas only). prefill_q_tile: query tokens of one prefill tile of the attention
    kernel (a tile reads its visible keys once; pallas only). Each LayerWork also carries the
    call's parallel units: attention tiles (a decode row each, a prefill work's tokens in tiles of
    prefill_q_tile) x KV heads, and the grouped matmuls' row tiles.
    """

    def __init__(self, model: ModelConfig, dtype_bytes: int, backend: str, page_slots: int,
                 expert_load: ExpertLoad | None = None, block_m=None, tp: int = 1, ep: int = 1,
                 prefill_q_tile: int = PREFILL_Q_TILE):
        if backend not in ("pallas", "reference"):
            raise ValueError(f"backend must be pallas or reference, got {backend!r}")
        if model.is_moe and expert_load is None:
            raise ValueError(f"{model.name} is a MoE model: an expert load (routing model) is needed")
        self.model, self.backend, self.page_slots = model, backend, page_slots
        self.prefill_q_tile = prefill_q_tile
        self.expert_load, self.block_m = expert_load, block_m
        self.dtype_bytes = b = dtype_bytes
        H, N, A = model.num_heads, model.num_kv_heads, model.head_dim
        # One device's share under tp x ep (lp_jax.parallel): attention, its KV and each expert's
        # hidden dim split over tp, the experts over ep, the router whole on every device.
        self.tp, self.ep = tp, ep
        dense = model.attention_params_per_layer() / tp + (model.router_params() if model.is_moe
                                                           else model.ffn_params_per_layer() / tp)
        self.dense_bytes, self.dense_flops_per_row = dense * b, 2.0 * dense
        self.kv_bytes_per_key = 2.0 * N * A * b / tp
        self.flops_per_pair = 4.0 * H * A / tp
        self.expert_bytes_each = model.expert_params() * b / tp if model.is_moe else 0
        self.expert_flops_per_row = 2.0 * model.expert_params() / tp
        self.windows = {"full": None, "sliding": model.sliding_window}
        self.types = tuple(t for t in LAYER_TYPES if t in model.layer_types)
        # sliding_before[i]: sliding layers among layers [0, i).
        self.sliding_before = [0]
        for t in model.layer_types:
            self.sliding_before.append(self.sliding_before[-1] + (t == "sliding"))
        self.head_bytes = model.vocab_size * model.hidden_size * b
        self.head_flops_per_row = 2.0 * model.vocab_size * model.hidden_size

    def layer_counts(self, lo: int, n: int) -> dict[str, int]:
        """{layer type: layers of that type} among layers [lo, lo + n)."""
        s = self.sliding_before[lo + n] - self.sliding_before[lo]
        return {"full": n - s, "sliding": s}

    def expert_work(self, rows: int, valid_rows: int, num_decodes: int, prefill_tokens: tuple[int, ...],
                    distinct: float | None = None, expected: float | None = None,
                    tiles: float | None = None) -> tuple[float, float, float]:
        """(expert bytes, expert FLOPs, row tiles) of one MoE layer. distinct: measured distinct experts
        (calibration), else the routing model's expectation (`expected`, if the caller has it);
        tiles: measured row tiles (calibration), else the routing model's expectation (adjusted
        by distinct - expected where only the experts were measured)."""
        if not self.model.is_moe:
            return 0.0, 0.0, 0.0
        K, E = self.model.num_experts_per_tok, self.model.num_experts
        if self.backend == "reference":
            return E / self.ep * self.expert_bytes_each, rows * K * E / self.ep * self.expert_flops_per_row, 0.0
        bm = self.block_m(valid_rows * K)
        if expected is None:
            expected = self.expert_load.expected_distinct(num_decodes, prefill_tokens)
        if tiles is None:
            tiles = self._tiles(num_decodes, prefill_tokens, bm)
            if distinct is not None:
                # Measured experts: the tiles past each expert's first from the routing model.
                tiles += distinct - expected
        if distinct is None:
            distinct = expected
        # HBM serves each loaded expert once (its later tiles hit L2: on the H100 an 8192-token
        # layer takes less time than re-reading weights per tile would); a tile computes block_m
        # rows whether or not its expert has that many.
        # Under ep each device holds E / ep of the experts: on average that share of the loaded
        # experts and of their tiles.
        return (distinct / self.ep * self.expert_bytes_each, tiles / self.ep * bm * self.expert_flops_per_row,
                tiles / self.ep)

    def row_tiles(self, num_decodes: int, prefill_tokens: tuple[int, ...]) -> float:
        """Expected row tiles one MoE layer's grouped matmul streams for these rows, at the
        kernel's block_m (what the engine accounts as streamed expert bytes)."""
        valid = num_decodes + sum(prefill_tokens)
        return self._tiles(num_decodes, prefill_tokens, self.block_m(valid * self.model.num_experts_per_tok))

    @functools.lru_cache(maxsize=65536)
    def _tiles(self, num_decodes: int, prefill_tokens: tuple[int, ...], block_m: int) -> float:
        return self.expert_load.expected_tiles(num_decodes, prefill_tokens, block_m)

    def layer_works(self, rows: int, decode_contexts: list[int], prefills: list[tuple[int, int]],
                    distinct: float | None = None, expected: float | None = None,
                    tiles: float | None = None) -> dict[str, LayerWork]:
        """{layer type: LayerWork} of a call of `rows` padded rows: a decode row per entry of
        decode_contexts (keys it sees, itself included: position + 1) and prefill rows of
        positions [start, end) per entry of prefills. distinct / expected / tiles: see expert_work."""
        tokens = tuple(e - s for s, e in prefills)
        valid = len(decode_contexts) + sum(tokens)
        eb, ef, eu = self.expert_work(rows, valid, len(decode_contexts), tokens, distinct, expected, tiles)
        dense_flops = rows * self.dense_flops_per_row
        q = self.prefill_q_tile
        units = 0.0
        if self.backend == "pallas":
            units = (len(decode_contexts) + sum(-(-n // q) for n in tokens)) * self.model.num_kv_heads / self.tp
        out = {}
        for t in self.types:
            longest = 0.0
            if self.backend == "reference":
                keys = pairs = rows * self.page_slots
            else:
                w = self.windows[t]
                dec = sum(decode_contexts) if w is None else sum([c if c < w else w for c in decode_contexts])
                pairs = keys = dec
                if decode_contexts:
                    # The longest unit's K/V bytes, at the fair share of HBM among the active units:
                    # x active units / CTAs (1 when they fill the device), so at unit_bw (bytes/s
                    # of one CTA's share) its stream lasts bytes x active / (HBM bandwidth).
                    splits = key_splits(rows, self.model.num_kv_heads)
                    active = min(units * splits, ATTENTION_CTAS) / ATTENTION_CTAS
                    longest = (min(max(decode_contexts), w or 1 << 62) / splits
                               * self.kv_bytes_per_key / self.model.num_kv_heads * active)
                for s, e in prefills:
                    p = visible_pairs(s, e, w)
                    pairs += p
                    keys += p / q + (e if w is None or e < w else w)
            out[t] = LayerWork(rows, self.dense_bytes, dense_flops, keys * self.kv_bytes_per_key,
                               pairs * self.flops_per_pair, eb, ef, units, eu, longest)
        return out
