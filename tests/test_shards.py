"""Batches that span shard boundaries are gathered into whole shards, in order, equal to filling each shard alone."""

import numpy as np
import pytest

from featstore.extraction.batching import order_split, token_batches
from featstore.extraction.shards import ShardAssembler
from featstore.store.layout import SHARD_EXAMPLES, SplitShape

LAYERS, HEADS, D_MODEL = 2, 3, 4


def fake_outputs(split, batch):
    """Per-row values that say which row and key they belong to; keys past a row's length are 0."""
    width = int(split.seq_lens[batch].max())
    rows = np.arange(batch.start, batch.stop)
    keys = np.arange(width)
    attn = (rows[:, None, None, None] % 16 + 1 + keys / 64).astype(np.float16)  # exact in float16
    attn = np.broadcast_to(attn, (len(rows), LAYERS, HEADS, width)).copy()
    attn *= keys < split.seq_lens[batch][:, None, None, None]
    resid = np.broadcast_to(rows[:, None, None].astype(np.float16), (len(rows), LAYERS, D_MODEL)).copy()  # < 2048
    return attn, resid


@pytest.mark.parametrize("shards", [[0, 1, 2, 3], [1, 2, 3], [2, 3], [1], [0, 3]], ids=str)
def test_shards_from_batches_spanning_them_equal_each_shard_filled_alone(shards):
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(2, 7, size=2 * SHARD_EXAMPLES + 50), rng.integers(20, 31, size=100)])
    encoded = [np.arange(1, n + 1) for n in rng.permutation(lengths)]
    split = order_split(np.arange(len(encoded)), encoded, max_len=64, keep_first=True)
    shape = SplitShape(len(encoded), LAYERS, HEADS, D_MODEL, int(split.seq_lens.max()))
    assembler = ShardAssembler(split, shape, shards)
    every_batch = token_batches(split.seq_lens, slice(0, shape.n_examples), 1000, 0.25)
    assert any(b.start // SHARD_EXAMPLES != (b.stop - 1) // SHARD_EXAMPLES for b in every_batch)
    assert shape.n_shards == 4
    assert assembler.rows_to_write == sum(len(range(shape.n_examples)[shape.shard_rows(s)]) for s in shards)
    batches = [b for b in every_batch if assembler.rows_in(b)]
    assert sum(assembler.rows_in(b) for b in batches) == assembler.rows_to_write
    written = []
    for batch in batches:
        written += assembler.add(batch, *fake_outputs(split, batch))
    assert [shard for shard, _ in written] == shards
    for shard, (attn, resid, tokens) in written:
        rows = shape.shard_rows(shard)
        expected_attn, expected_resid = fake_outputs(split, rows)
        np.testing.assert_array_equal(attn, expected_attn)
        np.testing.assert_array_equal(resid, expected_resid)
        np.testing.assert_array_equal(tokens, split.padded(rows))
        assert tokens.dtype == np.int32
