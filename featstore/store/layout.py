"""Where a split's arrays live in the store (`features.zarr/<model>/<dataset>/<split>/<version>/`, one
version folder per build) and how they are chunked, sharded and compressed.

A split is stored in length order, so neighbouring rows have similar lengths and a shard is only as wide as its
longest row (chunks past it are never written nor read). Inner chunks hold one layer (a one-layer read touches no
other layer), whole rows, and as many rows as make about `Chunking.chunk_bytes` (the cost of writing is per chunk
and per copy: fewer, larger chunks encoded in one pass write several times faster, see README's storage section);
a shard holds `SHARD_EXAMPLES` consecutive rows with every layer, so a split is a few files per array and each
writer always writes whole shards. The chunking is recorded in each array's metadata (zarr reads any) and in the
build key, so a resumed build never mixes two. Every chunk ends with its crc32c (zarr's `crc32c` codec), so a read
of one inner chunk can be checked on its own (format 2; format 1 had none).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from featstore.store.safe_paths import checked_name, confined_path

SHARD_EXAMPLES = 128
CHUNK_EXAMPLES = 8  # the fewest rows in an attention chunk
FORMAT_VERSION = 2
FEATURES = "features.zarr"
PROBES = "probes"
COMPLETE = "COMPLETE"  # the marker object a published version ends with
VERSION_NAME = re.compile(r"v\d{8}T\d{6}-[0-9a-f]{8}")


@dataclass(frozen=True)
class Chunking:
    """How attention is cut into inner chunks and compressed: `token_chunk` keys and about `chunk_bytes` (rows
    added in powers of two) per one-layer chunk, Blosc-zstd at `clevel`; with `direct`, featstore encodes whole
    shards itself (`featstore.store.shard_encoding`), else zarr writes them."""

    token_chunk: int
    chunk_bytes: int
    clevel: int
    direct: bool


LEGACY_CHUNKING = Chunking(token_chunk=128, chunk_bytes=64 * 1024, clevel=3, direct=False)  # stores before 2026-12
CHUNKING = Chunking(token_chunk=2048, chunk_bytes=1024 * 1024, clevel=1, direct=True)  # see benchmarks/host_path.py


def compressor(clevel: int = 3) -> BloscCodec:
    """Blosc-zstd with byte shuffle: the best measured on padded float16 attention (storage-stack notes)."""
    return BloscCodec(cname="zstd", clevel=clevel, shuffle="shuffle", typesize=2)


def compressors(dtype: str, clevel: int = 3) -> list:
    """An array's bytes-to-bytes codecs: Blosc for float16 (zarr's default Zstd otherwise), then a crc32c."""
    return [compressor(clevel) if dtype == "float16" else ZstdCodec(level=0), Crc32cCodec()]


def model_dir_name(model_key: str) -> str:
    """A directory name for a model key (`random:tiny` -> `random-tiny`, `org/name` -> `org--name`)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", model_key.replace("/", "--"))


def split_prefix(model_key: str, dataset: str, split: str) -> str:
    """The store key of one split's folder, `features.zarr/<model>/<dataset>/<split>`: it holds the split's
    versions, one folder per build (the catalog names the published one). Each part is checked: the dataset
    and split names come from a catalog, which may have been cloned."""
    parts = (model_dir_name(model_key), dataset, split)
    checked = (checked_name(part, what) for part, what in zip(parts, ("model", "dataset", "split"), strict=True))
    return "/".join([FEATURES, *checked])


def new_version() -> str:
    """A fresh version folder name, sortable by time: `v20261128T031500-1a2b3c4d`."""
    return f"v{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def is_version_name(name: str) -> bool:
    """Whether `name` is a version folder name that `new_version` makes (the only folders featstore deletes
    whole when it drops or retires a split)."""
    return VERSION_NAME.fullmatch(name) is not None


def tokenizer_path(tokenizers_dir: Path, model_key: str) -> Path:
    """The folder of a model's tokenizer (`save_pretrained` files), kept so tokens decode without the model."""
    return confined_path(tokenizers_dir, model_dir_name(model_key), "model")


@dataclass(frozen=True)
class SplitShape:
    """The sizes that fix a split's array shapes, chunks and shards."""

    n_examples: int
    n_layers: int
    n_heads: int
    d_model: int
    max_seq_len: int
    chunking: Chunking = CHUNKING

    @property
    def token_chunk(self) -> int:
        return min(self.chunking.token_chunk, self.max_seq_len)

    @property
    def chunk_examples(self) -> int:
        """Rows per attention chunk: the largest power of two from CHUNK_EXAMPLES to SHARD_EXAMPLES whose chunk
        of one layer (all heads, one token chunk, float16) stays within the chunking's `chunk_bytes`."""
        rows, most = CHUNK_EXAMPLES, self.chunking.chunk_bytes
        while rows * 2 <= SHARD_EXAMPLES and rows * 2 * self.n_heads * self.token_chunk * 2 <= most:
            rows *= 2
        return rows

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_examples / SHARD_EXAMPLES)

    def shard_rows(self, shard: int) -> slice:
        return slice(shard * SHARD_EXAMPLES, min((shard + 1) * SHARD_EXAMPLES, self.n_examples))

    def arrays(self) -> dict[str, dict]:
        """zarr.create_array keyword arguments for each array of the split."""
        n, layers, heads, d, t, tc = (
            self.n_examples,
            self.n_layers,
            self.n_heads,
            self.d_model,
            self.max_seq_len,
            self.token_chunk,
        )
        padded_t = math.ceil(t / tc) * tc
        padded_n = max(self.n_shards, 1) * SHARD_EXAMPLES
        return {
            "attn": dict(
                shape=(n, layers, heads, t),
                dtype="float16",
                chunks=(self.chunk_examples, 1, heads, tc),
                shards=(SHARD_EXAMPLES, layers, heads, padded_t),
                dimension_names=["example", "layer", "head", "token"],
            ),
            "resid": dict(
                shape=(n, layers, d),
                dtype="float16",
                chunks=(SHARD_EXAMPLES, 1, d),
                shards=(SHARD_EXAMPLES, layers, d),
                dimension_names=["example", "layer", "d_model"],
            ),
            "tokens": dict(
                shape=(n, t),
                dtype="int32",
                chunks=(SHARD_EXAMPLES, t),
                shards=None,
                dimension_names=["example", "token"],
            ),
            "seq_len": dict(
                shape=(n,), dtype="int32", chunks=(SHARD_EXAMPLES,), shards=(padded_n,), dimension_names=["example"]
            ),
            "example_id": dict(
                shape=(n,), dtype="int64", chunks=(SHARD_EXAMPLES,), shards=(padded_n,), dimension_names=["example"]
            ),
        }
