"""Shards encoded by featstore read back through zarr exactly as the same values written by zarr itself."""

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from featstore.store.layout import compressors
from featstore.store.shard_encoding import shard_encoder

SHAPE, CHUNKS, SHARDS = (300, 3, 2, 20), (32, 1, 2, 8), (128, 3, 2, 24)


def sharded(compressor_list, shape=SHAPE, shards=SHARDS):
    return zarr.create_array(
        {}, shape=shape, dtype="float16", chunks=CHUNKS, shards=shards, fill_value=0, compressors=compressor_list
    )


@pytest.mark.parametrize("shard, rows, width", [(0, 128, 20), (1, 128, 5), (2, 44, 17), (2, 44, 1)], ids=str)
def test_an_encoded_shard_reads_as_the_same_block_written_by_zarr(shard, rows, width):
    block = np.random.default_rng(shard).random((rows, 3, 2, width)).astype(np.float16)
    block[-3:] = 0  # chunks holding zeros are written all the same, and read as zeros
    ours, theirs = sharded(compressors("float16", 1)), sharded(compressors("float16", 1))
    encoder = shard_encoder(ours)
    key = ours.metadata.encode_chunk_key((shard, 0, 0, 0))
    sync(ours.store.set(key, default_buffer_prototype().buffer.from_bytes(encoder.encode(block))))
    region = (slice(shard * 128, shard * 128 + rows), slice(None), slice(None), slice(0, width))
    theirs[region] = block
    np.testing.assert_array_equal(ours[:], theirs[:])
    np.testing.assert_array_equal(ours[region], block)


def test_other_codec_chains_and_shards_split_along_other_axes_are_left_to_zarr():
    assert shard_encoder(sharded([ZstdCodec(level=0), Crc32cCodec()])) is None
    assert shard_encoder(sharded([BloscCodec(cname="zstd", clevel=1, typesize=2)])) is None
    assert shard_encoder(sharded(compressors("float16"), shards=(128, 3, 2, 8))) is None
    assert shard_encoder(zarr.create_array({}, shape=SHAPE, dtype="float16", chunks=CHUNKS)) is None
