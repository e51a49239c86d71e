"""Tokenised splits in length order, and batches that fill a token budget with little padding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenizedSplit:
    """A split's examples sorted by (length, example_id): the row order of its arrays."""

    example_ids: np.ndarray
    token_ids: list[np.ndarray]
    seq_lens: np.ndarray
    source_lens: np.ndarray

    @property
    def truncated(self) -> np.ndarray:
        return self.source_lens > self.seq_lens

    def padded(self, rows: slice) -> np.ndarray:
        """Rows `rows` as a right-padded [B, longest] int array (padding 0; lengths say what is real)."""
        selected = self.token_ids[rows]
        out = np.zeros((len(selected), int(self.seq_lens[rows].max())), dtype=np.int64)
        for i, ids in enumerate(selected):
            out[i, : len(ids)] = ids
        return out


def truncate_left(ids: np.ndarray, max_len: int, keep_first: bool) -> np.ndarray:
    """Keep the last tokens (the SAE-Probes convention); with `keep_first`, the BOS token stays in front."""
    if len(ids) <= max_len:
        return ids
    if keep_first:
        return np.concatenate([ids[:1], ids[len(ids) - max_len + 1 :]])
    return ids[len(ids) - max_len :]


def order_split(example_ids: np.ndarray, encoded: list[np.ndarray], max_len: int, keep_first: bool) -> TokenizedSplit:
    """Truncate every example and sort the split by length (ties by example_id), so batches and shards pad little."""
    truncated = [truncate_left(ids, max_len, keep_first) for ids in encoded]
    seq_lens = np.array([len(ids) for ids in truncated], dtype=np.int32)
    source_lens = np.array([len(ids) for ids in encoded], dtype=np.int32)
    order = np.lexsort((example_ids, seq_lens))
    return TokenizedSplit(
        example_ids=np.asarray(example_ids, dtype=np.int64)[order],
        token_ids=[truncated[i] for i in order],
        seq_lens=seq_lens[order],
        source_lens=source_lens[order],
    )


def token_batches(seq_lens: np.ndarray, rows: slice, batch_tokens: int, slack: float) -> list[slice]:
    """Consecutive rows (sorted by length) whose padded size, rows x longest, stays within `batch_tokens`.

    A batch also ends where the next row would make its padded tokens more than (1 + `slack`) times
    its real ones, so padding stays small even when one batch could hold thousands of short rows
    (on a CPU, whose speed hardly depends on batch size, a small slack computes fewer padded tokens; on a GPU,
    larger batches are worth some padding).
    """
    batches, start = [], rows.start
    while start < rows.stop:
        stop, real = start + 1, int(seq_lens[start])
        while stop < rows.stop:
            longest, count = int(seq_lens[stop]), stop + 1 - start
            if count * longest > batch_tokens or count * longest > (1 + slack) * (real + longest):
                break
            real += longest
            stop += 1
        batches.append(slice(start, stop))
        start = stop
    return batches
