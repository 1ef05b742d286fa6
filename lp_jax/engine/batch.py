"""The ragged batch of one layer-range call, built on the host as flat numpy arrays.

Decode rows and prefill rows of several requests share one token axis of T rows (padded to a
bucket). Each row says where its input hidden state comes from (the embedding of its token, or a
row of the executor's hidden buffer), where its output goes, its position, its KV write slot and
its sequence (an index into the block tables). Attention is uniform: a row sees the keys of its
sequence at positions <= its own, read through the block table after this call's K/V are
written; that is its own prompt causally, its paged prefix, or its decode history.

A decode row's input token may still be on the device (sampled by the previous iteration and not
yet read back): then `prev_T` names its slot in the executor's sampled-token buffer.

The executor's hidden buffer has R = max_num_seqs + max(token_budget, max_prefill_tokens,
max_cohort_tokens, max_lone_prompt_tokens) + 1 rows (EngineConfig.hidden_rows): decode rows
[0, max_num_seqs), prefill rows after them, and a trash row last that padding rows write to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jax
import numpy as np

from lp_jax.engine.kv_cache import TRASH_PAGE, BlockManager
from lp_jax.engine.request import Request

ON_HOST = -1  # prev_T of a row whose token is known on the host


@jax.tree_util.register_dataclass
@dataclass
class RowBatch:
    """Arrays of one call. T rows, B = max_num_seqs + 1 sequences (the last is padding's),
    M pages per sequence."""

    tokens_T: np.ndarray  # int32 token id (used when from_embed and prev_T == ON_HOST)
    prev_T: np.ndarray  # int32 slot of the token in the sampled-token buffer, or ON_HOST
    from_embed_T: np.ndarray  # bool: input is the token's embedding, else hidden[src]
    src_T: np.ndarray  # int32 row of the hidden buffer to read
    dst_T: np.ndarray  # int32 row of the hidden buffer to write (trash row for padding)
    pos_T: np.ndarray  # int32 position in its sequence
    seq_T: np.ndarray  # int32 index into block_tables_BM
    page_T: np.ndarray  # int32 KV write page (TRASH_PAGE for padding)
    offset_T: np.ndarray  # int32 KV write offset within the page
    valid_T: np.ndarray  # bool: a real row (padding rows compute garbage that nobody reads)
    routing_seed_T: np.ndarray  # int32 routing seed of the row's request (calibrated routing profiles)
    block_tables_BM: np.ndarray  # int32 page ids, TRASH_PAGE where unallocated


class RowBatchBuilder:
    """Accumulates the rows of one call a request (prefill) or a whole decode set at a time, as
    numpy arrays (no per-token Python loop), then pads them to a bucket."""

    def __init__(self, blocks: BlockManager, max_num_seqs: int, pages_per_seq: int, trash_row: int,
                 from_embed: bool):
        self.blocks = blocks
        self.trash_row = trash_row
        self.pad_seq = max_num_seqs
        self.from_embed = from_embed
        self.tables = np.full((max_num_seqs + 1, pages_per_seq), TRASH_PAGE, np.int32)
        self.seq_of: dict[int, int] = {}
        # Per added part: (tokens, prev, hidden row, seq, position, request id, routing seed),
        # each [n] int32.
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.num_rows = 0

    def _seq(self, req: Request) -> int:
        if req.request_id not in self.seq_of:
            b = len(self.seq_of)
            table = self.blocks.table_array(req.request_id)
            self.tables[b, :len(table)] = table
            self.seq_of[req.request_id] = b
        return self.seq_of[req.request_id]

    def _append(self, tokens, prev, hidden, seq, pos, rid, routing_seed) -> None:
        self.parts.append(tuple(np.asarray(a, np.int32) for a in (tokens, prev, hidden, seq, pos, rid, routing_seed)))
        self.num_rows += len(pos)

    def add_prefill(self, req: Request, start: int, end: int, hidden_row: int) -> None:
        """Rows for positions [start, end) of `req` (tokens known on the host); their hidden
        states live at hidden_row, hidden_row + 1, ..."""
        n = end - start
        self._append(req.tokens_between(start, end), np.full(n, ON_HOST), np.arange(hidden_row, hidden_row + n),
                     np.full(n, self._seq(req)), np.arange(start, end), np.full(n, req.request_id),
                     np.full(n, req.routing_seed))

    def add_decodes(self, reqs: Sequence[Request], prev_B: np.ndarray) -> None:
        """One row per request at position num_computed, hidden rows 0, 1, ...; prev_B [n] is
        each row's slot in the sampled-token buffer, or ON_HOST (then its token is read here)."""
        pos = [r.num_computed for r in reqs]
        tokens = [0 if s != ON_HOST else r.token_at(p) for r, p, s in zip(reqs, pos, prev_B.tolist())]
        self._append(tokens, prev_B, np.arange(len(reqs)), [self._seq(r) for r in reqs], pos,
                     [r.request_id for r in reqs], [r.routing_seed for r in reqs])

    def row_tokens(self) -> list[tuple[int, int]]:
        """(request id, position) of each row added so far."""
        return [(rid, p) for part in self.parts for rid, p in zip(part[5].tolist(), part[4].tolist())]

    def __len__(self) -> int:
        return self.num_rows

    def build(self, num_rows: int) -> RowBatch:
        n = self.num_rows
        if n > num_rows:
            raise ValueError(f"{n} rows do not fit a bucket of {num_rows}")
        pad = num_rows - n

        def col(i, fill):
            return np.concatenate([p[i] for p in self.parts] + [np.full(pad, fill, np.int32)])

        hidden, seq, pos = col(2, self.trash_row), col(3, self.pad_seq), col(4, 0)
        valid = np.arange(num_rows) < n
        page = self.tables[seq, pos // self.blocks.page_size]  # padding: the pad sequence's row, all trash
        return RowBatch(
            tokens_T=col(0, 0), prev_T=col(1, ON_HOST), from_embed_T=np.full(num_rows, self.from_embed) | ~valid,
            src_T=hidden, dst_T=hidden, pos_T=pos, seq_T=seq, page_T=page,
            offset_T=(pos % self.blocks.page_size).astype(np.int32), valid_T=valid, routing_seed_T=col(6, 0),
            block_tables_BM=self.tables)
