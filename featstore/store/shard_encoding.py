"""Encode one whole shard of a sharded array into the bytes zarr's sharding codec reads, in one pass.

zarr 3.1 writes a shard through per-chunk asyncio tasks and several copies of every chunk (a fill-value
comparison, a filled chunk buffer, the crc32c appended by `np.append`, the shard concatenated): about 3x the
cost of Blosc itself (benchmarks/host_path.py). Here each inner chunk is cut from the shard's rows, Blosc-encoded
and checksummed, and the shard file is the chunks followed by the index, as the zarr v3 sharding spec lays it
out (index at the end: (offset, nbytes) little-endian uint64 per inner chunk in C order, 2**64-1 for a chunk
not written, then the index's crc32c). Only the codec chain featstore creates is encoded here
(`shard_encoder` says None otherwise); zarr reads the result like its own (tests compare decoded arrays).
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation

EMPTY = 2**64 - 1
# Inner chunks are encoded in parallel (Blosc and crc32c release the GIL), so one shard uses every core: a split
# has few shards (128 rows each), and the GPU waits on the last ones at the end of each split.
_CHUNK_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="chunk-encoder")


class ShardEncoder:
    """Encodes whole shards of one array: inner chunks `chunks`, shards `shards`, Blosc then crc32c."""

    def __init__(self, chunks: tuple[int, ...], shards: tuple[int, ...], blosc: BloscCodec):
        self.chunks, self.shards = chunks, shards
        self.per_shard = tuple(s // c for s, c in zip(shards, chunks, strict=False))
        self.codec = numcodecs.Blosc(
            cname=blosc.cname.value,
            clevel=blosc.clevel,
            shuffle=numcodecs.Blosc.SHUFFLE,
            blocksize=blosc.blocksize,
            typesize=blosc.typesize,
        )

    def encode(self, block: np.ndarray) -> bytes:
        """The shard file holding `block` at the shard's origin (smaller than the shard: the rest is fill, and
        inner chunks wholly outside `block` are not written)."""
        written = [
            coords
            for coords in itertools.product(*(range(n) for n in self.per_shard))
            if all(c * size < extent for c, size, extent in zip(coords, self.chunks, block.shape, strict=False))
        ]
        pieces, offset = [], 0
        index = np.full((*self.per_shard, 2), EMPTY, dtype="<u8")
        encoded_chunks = _CHUNK_POOL.map(lambda coords: self._chunk(block, coords), written)
        for coords, encoded in zip(written, encoded_chunks, strict=True):
            pieces.append(encoded)
            index[coords] = (offset, len(encoded))
            offset += len(encoded)
        index_bytes = index.tobytes()
        pieces += [index_bytes, google_crc32c.value(index_bytes).to_bytes(4, "little")]
        return b"".join(pieces)

    def _chunk(self, block: np.ndarray, coords: tuple[int, ...]) -> bytes:
        """One inner chunk, Blosc-encoded with its crc32c appended (an edge chunk stored at full size, fill past
        the data)."""
        part = block[tuple(slice(c * size, (c + 1) * size) for c, size in zip(coords, self.chunks, strict=False))]
        if part.shape != self.chunks:
            whole = np.zeros(self.chunks, dtype=block.dtype)
            whole[tuple(slice(0, n) for n in part.shape)] = part
            part = whole
        encoded = self.codec.encode(np.ascontiguousarray(part))
        return encoded + google_crc32c.value(encoded).to_bytes(4, "little")


def shard_encoder(array: zarr.Array) -> ShardEncoder | None:
    """An encoder for `array`'s shards if its codecs are the chain featstore writes (little-endian bytes, Blosc,
    crc32c inside shards indexed at the end with a crc32c) and a shard spans every axis but the first, else None
    (zarr writes it)."""
    codecs = array.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    inner, index = sharding.codecs, sharding.index_codecs
    expected_inner = (
        len(inner) == 3
        and isinstance(inner[0], BytesCodec)
        and isinstance(inner[1], BloscCodec)
        and isinstance(inner[2], Crc32cCodec)
        and getattr(inner[0].endian, "value", None) != "big"
    )
    expected_index = (
        len(index) == 2
        and isinstance(index[0], BytesCodec)
        and isinstance(index[1], Crc32cCodec)
        and index[0].endian.value == "little"
    )
    if not (expected_inner and expected_index and sharding.index_location == ShardingCodecIndexLocation.end):
        return None
    if array.dtype.byteorder == ">" or any(s < n for s, n in zip(array.shards[1:], array.shape[1:], strict=False)):
        return None
    return ShardEncoder(tuple(sharding.chunk_shape), tuple(array.shards), inner[1])
