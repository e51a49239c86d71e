"""Whole attention rows as a probe input: (examples, layers, heads, tokens) with each example's length and,
optionally, the attended token ids, read in length-ordered mini-batches so memory is bounded by a batch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from probes.base import as_numpy
from probes.errors import ProbeInputError


@dataclass
class AttentionRows:
    """Attention rows of n examples and their lengths; `attn` may be numpy, torch, or a lazy array (dask or an
    xarray DataArray) that is only read batch by batch. Tokens at positions >= length are padding: never read
    into a prediction."""

    attn: Any
    lengths: np.ndarray
    tokens: Any | None = None

    def __post_init__(self) -> None:
        self.lengths = np.asarray(as_numpy(self.lengths)).astype(np.int64).ravel()
        shape = tuple(self.attn.shape)
        if len(shape) != 4:
            raise ProbeInputError(f"attention rows must be (examples, layers, heads, tokens), got shape {shape}")
        if self.lengths.shape != (shape[0],):
            raise ProbeInputError(f"lengths must have one entry per example ({shape[0]}), got {self.lengths.shape}")
        if shape[0] and (self.lengths.min() < 1 or self.lengths.max() > shape[3]):
            raise ProbeInputError(f"lengths must lie in 1..{shape[3]} (the token axis)")
        if self.tokens is not None and tuple(self.tokens.shape) != (shape[0], shape[3]):
            raise ProbeInputError(
                f"tokens must be (examples, tokens) = {(shape[0], shape[3])}, got {tuple(self.tokens.shape)}"
            )

    @classmethod
    def from_view(cls, view, with_tokens: bool = True) -> AttentionRows:
        """From an xarray Dataset with `attn` (example, layer, head, token), a `seq_len` coordinate and `tokens`."""
        return cls(view["attn"], view["seq_len"].values, view["tokens"] if with_tokens and "tokens" in view else None)

    @property
    def n_channels(self) -> int:
        """Layers x heads: one channel per head."""
        return int(self.attn.shape[1] * self.attn.shape[2])

    @property
    def n_layers(self) -> int:
        return int(self.attn.shape[1])

    @property
    def n_heads(self) -> int:
        return int(self.attn.shape[2])

    def __len__(self) -> int:
        return int(self.attn.shape[0])

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """float32 attention (b, layers*heads, width), lengths and int64 tokens of these rows, cut to their
        longest length and with padding set to 0 (whatever the store held there)."""
        rows = np.asarray(rows)
        lengths = self.lengths[rows]
        width = int(lengths.max())
        order = np.argsort(rows, kind="stable")
        ascending = rows[order]
        attn = _read(self.attn, ascending, width).astype(np.float32)[np.argsort(order)]
        valid = np.arange(width) < lengths[:, None]
        attn = np.where(valid[:, None, :], attn.reshape(len(rows), -1, width), np.float32(0))
        tokens = None
        if self.tokens is not None:
            tokens = _read(self.tokens, ascending, width).astype(np.int64)[np.argsort(order)] * valid
        if not np.isfinite(attn).all():
            raise ProbeInputError("attention rows hold NaN or inf values inside their lengths")
        return attn, lengths, tokens

    def max_token(self, batch_size: int = 1024) -> int:
        """The largest token id inside the examples' lengths (0 without tokens); reads token ids only, a batch
        at a time."""
        largest = 0
        if self.tokens is None:
            return largest
        for rows in self.batches(np.arange(len(self)), batch_size):
            lengths = self.lengths[rows]
            tokens = _read(self.tokens, rows, int(lengths.max()))
            largest = max(largest, int(np.where(np.arange(tokens.shape[1]) < lengths[:, None], tokens, 0).max()))
        return largest

    def batches(self, rows: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        """`rows` sorted by length and cut into near-equal groups of at most `batch_size` (no lone last row):
        little padding inside a batch."""
        rows = np.asarray(rows)
        ordered = rows[np.argsort(self.lengths[rows], kind="stable")]
        yield from (batch for batch in np.array_split(ordered, max(1, -(-len(ordered) // batch_size))) if batch.size)


def _read(array: Any, rows: np.ndarray, width: int) -> np.ndarray:
    """rows (ascending) of `array`, first `width` tokens, as numpy: one read for a contiguous range."""
    contiguous = rows.size and bool(np.all(np.diff(rows) == 1))
    index = slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows
    if hasattr(array, "isel"):  # xarray: positional on the first dim, then the token axis
        first = array.dims[0]
        picked = array.isel({first: index, array.dims[-1]: slice(0, width)})
        return np.asarray(picked.values)
    if hasattr(array, "compute"):  # dask
        return np.asarray(array[index][..., :width].compute())
    return np.asarray(as_numpy(array[index][..., :width]))
