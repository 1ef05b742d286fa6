"""Row batches and the bucket ladder, host only."""

from __future__ import annotations

import numpy as np
import pytest

from lp_jax.engine.batch import ON_HOST, RowBatchBuilder
from lp_jax.engine.config import EngineConfig, bucket_for
from lp_jax.engine.kv_cache import TRASH_PAGE, BlockManager
from lp_jax.engine.request import Request, SamplingParams, Status


def test_rows_equal_a_per_token_spelling():
    """Decodes (one token on the device) and two prefills, padded: every column equals what a
    plain loop over tokens gives."""
    Z, seqs, M, trash = 4, 4, 8, 99
    blocks = BlockManager(40, Z)
    rng = np.random.default_rng(0)
    reqs = [Request(i, [int(t) for t in rng.integers(0, 50, n)], SamplingParams(), 0.0, i) for i, n in
            enumerate((9, 5, 13))]
    for r in reqs:
        blocks.allocate(r.request_id, len(r.prompt) + 1)
    dec_a, dec_b, pre = reqs
    dec_a.output, dec_a.num_computed, dec_a.status = [7], 9, Status.DECODING  # its token 7 is on the host
    dec_b.num_computed, dec_b.status, dec_b.num_pending = 5, Status.DECODING, 1  # its token is in slot 3
    b = RowBatchBuilder(blocks, seqs, M, trash, from_embed=True)
    b.add_decodes([dec_a, dec_b], np.asarray([ON_HOST, 3], np.int32))
    b.add_prefill(pre, 2, 13, hidden_row=10)
    batch = b.build(bucket_for(len(b), (8, 16)))

    want = [(dec_a, 9, 7, ON_HOST, 0), (dec_b, 5, 0, 3, 1)] + \
        [(pre, p, pre.prompt[p], ON_HOST, 10 + p - 2) for p in range(2, 13)]
    n = len(want)
    assert batch.tokens_T.shape == (16,) and batch.valid_T.tolist() == [True] * n + [False] * (16 - n)
    for t, (r, p, token, prev, row) in enumerate(want):
        seq = [dec_a, dec_b, pre].index(r)
        got = (batch.tokens_T[t], batch.prev_T[t], batch.src_T[t], batch.dst_T[t], batch.pos_T[t], batch.seq_T[t],
               batch.page_T[t], batch.offset_T[t])
        assert got == (token, prev, row, row, p, seq, blocks.table(r.request_id)[p // Z], p % Z), t
        assert list(batch.block_tables_BM[seq, :len(blocks.table(r.request_id))]) == blocks.table(r.request_id)
    assert (batch.dst_T[n:] == trash).all() and (batch.page_T[n:] == TRASH_PAGE).all()
    assert (batch.seq_T[n:] == seqs).all() and (batch.block_tables_BM[seqs] == TRASH_PAGE).all()
    assert batch.from_embed_T.all()
    assert b.row_tokens() == [(r.request_id, p) for r, p, *_ in want]
    with pytest.raises(ValueError, match="13 rows do not fit a bucket of 8"):
        b.build(8)


def test_default_ladders_are_short_and_end_at_the_limits():
    assert EngineConfig(schedule="layered").buckets() == (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8256)
    assert EngineConfig(schedule="chunked").buckets() == (8, 16, 32, 64, 128, 256, 512)
    assert EngineConfig(schedule="prefill_first").buckets()[-1] == 8192
    assert 96 in EngineConfig(max_num_seqs=96).buckets()  # the full decode batch is a bucket
    with pytest.raises(ValueError, match="row_buckets end at 100 < max rows 8256"):
        EngineConfig(row_buckets=(16, 100)).buckets()
