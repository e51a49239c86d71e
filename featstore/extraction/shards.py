"""Gather the outputs of batches that span shard boundaries into whole shards, ready for the writer.

Batches are planned over the whole length-sorted split, so many short rows fill one forward pass
(shards of 128 rows would cap a batch of 10-token prompts at ~1,300 tokens); the stored layout is
unchanged, since the writer still receives whole shards in order. A resumed build and a repair pass the
shards still to write; the batches holding none of their rows are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """Copies batch outputs (rows in split order) into the buffers of the shards to write and hands back each
    shard once full, in ascending order; rows of other shards (already written, or intact in a repair) are
    dropped. `tokenized` may hold only the split's rows from `first_row` on (a cluster worker's window); rows
    and batches are still numbered as in the whole split."""

    def __init__(self, tokenized: TokenizedSplit, shape: SplitShape, shards: Sequence[int], first_row: int = 0):
        self.tokenized, self.shape, self.first_row = tokenized, shape, first_row
        self.waiting = sorted(shards)
        self.wanted = frozenset(shards)
        self.open: dict[int, ShardBuffer] = {}

    @property
    def rows_to_write(self) -> int:
        """How many rows the shards still to write hold."""
        return sum(self._rows(shard).stop - self._rows(shard).start for shard in self.wanted)

    def rows_in(self, batch: slice) -> int:
        """How many rows of `batch` belong to shards to write (0: the batch need not run)."""
        return sum(
            min(batch.stop, self._rows(shard).stop) - max(batch.start, self._rows(shard).start)
            for shard in range(batch.start // SHARD_EXAMPLES, (batch.stop - 1) // SHARD_EXAMPLES + 1)
            if shard in self.wanted
        )

    def add(self, batch: slice, attn: np.ndarray, resid: np.ndarray) -> list[tuple[int, tuple[np.ndarray, ...]]]:
        """Store a batch's rows that belong to shards to write; return the shards it completed, in order, as
        (shard, (attn, resid, tokens))."""
        start = batch.start
        while start < batch.stop:
            shard = start // SHARD_EXAMPLES
            stop = min(batch.stop, self._rows(shard).stop)
            if shard in self.wanted:
                buffer = self.open.get(shard) or self._open(shard)
                local = slice(start - buffer.rows.start, stop - buffer.rows.start)
                source = slice(start - batch.start, stop - batch.start)
                width = min(attn.shape[-1], buffer.attn.shape[-1])  # keys past a row's length are 0 in both
                buffer.attn[local, :, :, :width] = attn[source, :, :, :width]
                buffer.resid[local] = resid[source]
                buffer.filled += stop - start
            start = stop
        return self._completed()

    def _rows(self, shard: int) -> slice:
        return self.shape.shard_rows(shard)

    def _open(self, shard: int) -> ShardBuffer:
        rows = self._rows(shard)
        width = int(self.tokenized.seq_lens[rows.stop - 1 - self.first_row])
        n, layers, heads, d_model = rows.stop - rows.start, self.shape.n_layers, self.shape.n_heads, self.shape.d_model
        buffer = ShardBuffer(
            rows,
            np.zeros((n, layers, heads, width), dtype=np.float16),
            np.zeros((n, layers, d_model), dtype=np.float16),
        )
        self.open[shard] = buffer
        return buffer

    def _completed(self) -> list[tuple[int, tuple[np.ndarray, ...]]]:
        done = []
        while self.waiting and self.waiting[0] in self.open and self._full(self.open[self.waiting[0]]):
            shard = self.waiting.pop(0)
            buffer = self.open.pop(shard)
            window = slice(buffer.rows.start - self.first_row, buffer.rows.stop - self.first_row)
            tokens = self.tokenized.padded(window).astype(np.int32)
            done.append((shard, (buffer.attn, buffer.resid, tokens)))
        return done

    @staticmethod
    def _full(buffer: ShardBuffer) -> bool:
        return buffer.filled == buffer.rows.stop - buffer.rows.start
