"""What a build plans and both ways of writing shards share: the build's settings, a split ready to extract, its
batches, and the signature of a shard writer (in this process, `featstore.extraction.build`, or on a dask cluster,
`featstore.extraction.distributed_build`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from featstore.extraction.batching import TokenizedSplit, token_batches
from featstore.extraction.models import LoadedModel
from featstore.progress import TokenProgress
from featstore.store.layout import CHUNKING, Chunking, SplitShape
from featstore.store.writer import ShardQueue, SplitWriter


@dataclass(frozen=True)
class BuildSettings:
    """What changes the stored numbers (max_len, dtype, limit) and what only changes speed."""

    max_len: int | None = None
    source: str = ""
    batch_tokens: int | None = None  # None: `default_batch_tokens` for the model and its device
    batch_slack: float | None = None  # padding a batch may add, see `token_batches`; None: `default_batch_slack`
    limit: int | None = None
    device: str = "auto"
    dtype: str = "float32"
    overwrite: bool = False
    repair: bool = False
    capture: str | None = None  # a CAPTURES strategy; None: the model's default
    writers: int | None = None  # shard-writer threads; None: `default_writers()`
    chunking: Chunking = CHUNKING  # how attention is chunked and compressed (benchmarks compare LEGACY_CHUNKING)

    def stored(self) -> dict:
        """The settings that must match for stored features to be reused or mixed (the weights' source included)."""
        return {"max_len": self.max_len, "dtype": self.dtype, "limit": self.limit, "source": self.source}


@dataclass(frozen=True)
class SplitPlan:
    """A split ready to extract: its rows in length order, its array shape, the writer of its building folder
    and the capture strategy that computes its rows."""

    tokenized: TokenizedSplit
    shape: SplitShape
    writer: SplitWriter
    capture: str


ShardWriting = Callable[[LoadedModel, SplitPlan, BuildSettings, TokenProgress], ShardQueue | None]
"""Writes and records every pending shard of a planned split: in this process (returning the queue of the shards
still being written, for the caller to close) or on a cluster (all written on return: None)."""


def split_batches(tokenized: TokenizedSplit, batch_tokens: int, slack: float) -> list[slice]:
    """The split's batches: `token_batches` over all its rows, so a resumed build or a repair recomputes a
    shard in exactly the batches of the first build (and so gets the same values)."""
    return token_batches(tokenized.seq_lens, slice(0, len(tokenized.seq_lens)), batch_tokens, slack)
