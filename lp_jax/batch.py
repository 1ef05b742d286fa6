"""The ragged batch of one layer-range call, built on the host as flat numpy arrays.

Decode rows and prefill rows of several requests share one token axis of T rows (padded to a
bucket). Each row says where its input hidden state comes from (the embedding of its token, or a
row of the executor's hidden buffer), where its output goes, its position, its KV write slot and
its sequence (an index into the block tables). Attention is uniform: a row sees the keys of its
sequence at positions <= its own, read through the block table after this call's K/V are
written; that is its own prompt causally, its paged prefix, or its decode history.

The executor's hidden buffer has R = max_num_seqs + max_prefill_rows + 1 rows: decode rows
[0, max_num_seqs), prefill rows after them, and a trash row last that padding rows write to.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from lp_jax.kv_cache import TRASH_PAGE, BlockManager
from lp_jax.request import Request


@jax.tree_util.register_dataclass
@dataclass
class RowBatch:
    """Arrays of one call. T rows, B = max_num_seqs + 1 sequences (the last is padding's),
    M pages per sequence."""

    tokens_T: np.ndarray  # int32 token id (used when from_embed)
    from_embed_T: np.ndarray  # bool: input is the token's embedding, else hidden[src]
    src_T: np.ndarray  # int32 row of the hidden buffer to read
    dst_T: np.ndarray  # int32 row of the hidden buffer to write (trash row for padding)
    pos_T: np.ndarray  # int32 position in its sequence
    seq_T: np.ndarray  # int32 index into block_tables_BM
    page_T: np.ndarray  # int32 KV write page (TRASH_PAGE for padding)
    offset_T: np.ndarray  # int32 KV write offset within the page
    valid_T: np.ndarray  # bool: a real row (padding rows compute garbage that nobody reads)
    block_tables_BM: np.ndarray  # int32 page ids, TRASH_PAGE where unallocated


class RowBatchBuilder:
    """Accumulates rows of one call, then pads them to a bucket."""

    def __init__(self, blocks: BlockManager, max_num_seqs: int, pages_per_seq: int, trash_row: int):
        self.blocks = blocks
        self.trash_row = trash_row
        self.pad_seq = max_num_seqs
        self.tables = np.full((max_num_seqs + 1, pages_per_seq), TRASH_PAGE, np.int32)
        self.seq_of: dict[int, int] = {}
        self.rows: list[tuple[int, bool, int, int, int, int, int]] = []
        self.owners: list[tuple[int, int]] = []

    def _seq(self, req: Request) -> int:
        if req.request_id not in self.seq_of:
            b = len(self.seq_of)
            table = self.blocks.table(req.request_id)
            self.tables[b, :len(table)] = table
            self.seq_of[req.request_id] = b
        return self.seq_of[req.request_id]

    def add(self, req: Request, positions: range, hidden_row: int, from_embed: bool) -> None:
        """Rows for `positions` of `req`; their hidden states live at hidden_row, hidden_row+1, ..."""
        seq, Z = self._seq(req), self.blocks.page_size
        table, tokens = self.blocks.table(req.request_id), req.tokens
        for i, p in enumerate(positions):
            self.rows.append((tokens[p], from_embed, hidden_row + i, seq, p, table[p // Z], p % Z))
            self.owners.append((req.request_id, p))

    def row_tokens(self) -> list[tuple[int, int]]:
        """(request id, position) of each row added so far."""
        return list(self.owners)

    def __len__(self) -> int:
        return len(self.rows)

    def build(self, num_rows: int) -> RowBatch:
        n = len(self.rows)
        if n > num_rows:
            raise ValueError(f"{n} rows do not fit a bucket of {num_rows}")
        cols = list(zip(*self.rows)) if self.rows else [()] * 7
        pad = num_rows - n

        def col(i, fill, dtype):
            return np.concatenate([np.asarray(cols[i], dtype), np.full(pad, fill, dtype)])

        hidden_rows = col(2, self.trash_row, np.int32)
        valid = np.arange(num_rows) < n
        return RowBatch(
            tokens_T=col(0, 0, np.int32), from_embed_T=col(1, True, np.bool_), src_T=hidden_rows,
            dst_T=hidden_rows, pos_T=col(4, 0, np.int32), seq_T=col(3, self.pad_seq, np.int32),
            page_T=col(5, TRASH_PAGE, np.int32), offset_T=col(6, 0, np.int32), valid_T=valid,
            block_tables_BM=self.tables)
