"""Paged KV cache: device page pools and the host BlockManager.

Device: K and V pools stacked over layers, each [L, P, Z, N, A] (P pages of Z tokens). Page 0 is
reserved: padding rows write their K/V there and unused block-table entries point to it, so no
real page is ever touched by padding. All layers share one block table per request (the same
page id holds that request's tokens in every layer's pool).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lp_jax.model.config import ModelConfig, ceil_div

TRASH_PAGE = 0


class OutOfPages(Exception):
    """Raised by BlockManager.allocate when the free list cannot cover a request."""


class BlockManager:
    """Host bookkeeping of pages: a free list and one block table (list of page ids) per request."""

    def __init__(self, num_pages: int, page_size: int):
        if num_pages < 2:
            raise ValueError(f"need at least 2 pages (one is reserved), got {num_pages}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.free: list[int] = list(range(num_pages - 1, TRASH_PAGE, -1))  # pop() gives low ids first
        self.tables: dict[int, list[int]] = {}
        self._arrays: dict[int, np.ndarray] = {}  # tables as int32 arrays, dropped when a table changes

    @property
    def usable_pages(self) -> int:
        return self.num_pages - 1

    def num_free(self) -> int:
        return len(self.free)

    def pages_needed(self, request_id: int, num_tokens: int) -> int:
        """Extra pages `request_id` needs to hold `num_tokens` tokens."""
        have = len(self.tables.get(request_id, ()))
        return max(0, ceil_div(num_tokens, self.page_size) - have)

    def can_allocate(self, request_id: int, num_tokens: int) -> bool:
        return self.pages_needed(request_id, num_tokens) <= len(self.free)

    def reserve(self, request_id: int, num_tokens: int) -> bool:
        """Grow the request's table to hold `num_tokens` tokens if the free list covers it; whether
        it did (can_allocate then allocate, in one look-up: the scheduler does this per decode
        per iteration)."""
        table = self.tables.get(request_id)
        have = len(table) if table is not None else 0
        need = -(-num_tokens // self.page_size) - have
        if need <= 0:
            return True
        if need > len(self.free):
            return False
        if table is None:
            table = self.tables[request_id] = []
        table.extend(self.free.pop() for _ in range(need))
        self._arrays.pop(request_id, None)
        return True

    def allocate(self, request_id: int, num_tokens: int) -> None:
        """Grow the request's table to hold `num_tokens` tokens; all-or-nothing."""
        need = self.pages_needed(request_id, num_tokens)
        if need > len(self.free):
            raise OutOfPages(f"request {request_id} needs {need} pages, {len(self.free)} free")
        table = self.tables.setdefault(request_id, [])
        table.extend(self.free.pop() for _ in range(need))
        if need:
            self._arrays.pop(request_id, None)

    def release(self, request_id: int) -> None:
        """Return all of the request's pages to the free list (no-op if it holds none)."""
        self.free.extend(reversed(self.tables.pop(request_id, [])))
        self._arrays.pop(request_id, None)

    def table(self, request_id: int) -> list[int]:
        return self.tables.get(request_id, [])

    def table_array(self, request_id: int) -> np.ndarray:
        """The block table as an int32 array (kept until the table changes: a decode adds a page
        only every page_size tokens, so row building mostly copies array to array)."""
        arr = self._arrays.get(request_id)
        if arr is None:
            arr = self._arrays[request_id] = np.asarray(self.table(request_id), np.int32)
        return arr

    def all_free(self) -> bool:
        return len(self.free) == self.usable_pages and not self.tables


def kv_bytes_per_page(model: ModelConfig, page_size: int, dtype) -> int:
    """Bytes one page occupies over all layers, K and V."""
    return 2 * model.num_layers * page_size * model.num_kv_heads * model.head_dim * jnp.dtype(dtype).itemsize


def allocate_pools(model: ModelConfig, num_pages: int, page_size: int, dtype, sharding=None):
    """Zeroed K and V pools, each [L, P, Z, N, A], on the default device, or made directly in
    `sharding`'s layout (each device allocates only its KV heads)."""
    shape = (model.num_layers, num_pages, page_size, model.num_kv_heads, model.head_dim)
    make = jax.jit(lambda: (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)),
                   out_shardings=None if sharding is None else (sharding, sharding))
    return make()
