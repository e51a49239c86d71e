"""Gather the outputs of batches that span shard boundaries into whole shards, ready for the writer.

Batches are planned over the whole length-sorted split, so many short rows fill one forward pass
(shards of 128 rows would cap a batch of 10-token prompts at ~1,300 tokens); the stored layout is
unchanged, since the writer still receives whole shards in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featstore.extraction.batching import TokenizedSplit
from featstore.store.layout import SHARD_EXAMPLES, SplitShape


@dataclass
class ShardBuffer:
    """One shard's arrays being filled: attn rows are as wide as the shard's longest example."""

    rows: slice
    attn: np.ndarray
    resid: np.ndarray
    filled: int = 0


class ShardAssembler:
    """Copies batch outputs (rows in split order) into shard buffers and hands back each shard once full."""

    def __init__(self, tokenized: TokenizedSplit, shape: SplitShape, first_shard: int):
        self.tokenized, self.shape = tokenized, shape
        self.next_shard = first_shard
        self.first_row = min(first_shard * SHARD_EXAMPLES, shape.n_examples)
        self.open: dict[int, ShardBuffer] = {}

    def add(self, batch: slice, attn: np.ndarray, resid: np.ndarray) -> list[tuple[int, tuple[np.ndarray, ...]]]:
        """Store a batch's rows (those before the first shard to write are dropped); return the shards it completed,
        in order, as (shard, (attn, resid, tokens))."""
        start = max(batch.start, self.first_row)
        while start < batch.stop:
            shard = start // SHARD_EXAMPLES
            buffer = self.open.get(shard) or self._open(shard)
            stop = min(batch.stop, buffer.rows.stop)
            local, source = slice(start - buffer.rows.start, stop - buffer.rows.start), slice(start - batch.start,
                                                                                                stop - batch.start)
            width = min(attn.shape[-1], buffer.attn.shape[-1])  # keys past a row's length are 0 in both
            buffer.attn[local, :, :, :width] = attn[source, :, :, :width]
            buffer.resid[local] = resid[source]
            buffer.filled += stop - start
            start = stop
        return self._completed()

    def _open(self, shard: int) -> ShardBuffer:
        rows = self.shape.shard_rows(shard)
        width = int(self.tokenized.seq_lens[rows.stop - 1])
        n, layers, heads, d_model = rows.stop - rows.start, self.shape.n_layers, self.shape.n_heads, self.shape.d_model
        buffer = ShardBuffer(rows, np.zeros((n, layers, heads, width), dtype=np.float16),
                             np.zeros((n, layers, d_model), dtype=np.float16))
        self.open[shard] = buffer
        return buffer

    def _completed(self) -> list[tuple[int, tuple[np.ndarray, ...]]]:
        done = []
        while self.next_shard in self.open and self._full(self.open[self.next_shard]):
            buffer = self.open.pop(self.next_shard)
            tokens = self.tokenized.padded(buffer.rows).astype(np.int32)
            done.append((self.next_shard, (buffer.attn, buffer.resid, tokens)))
            self.next_shard += 1
        return done

    @staticmethod
    def _full(buffer: ShardBuffer) -> bool:
        return buffer.filled == buffer.rows.stop - buffer.rows.start
