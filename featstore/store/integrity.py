"""Damage in a stored split is an error, never a different number.

The writer records every file it writes (size, crc32c, and the shard it belongs to) in a manifest kept in
the split's root attributes, and seals that root document with its own crc32c. Reads go through
`IntegrityStore`: a file in the manifest that is gone is an error (a file not in it was never written: all
padding), a whole file must match its recorded crc32c, and a part of a shard (its index or one inner chunk)
must match the crc32c stored at its end (the sharding index codec and every array's `crc32c` codec write it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import IO

import google_crc32c
import numpy as np
from zarr.abc.store import ByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from featstore.errors import FeatstoreError
from featstore.store.documents import MAX_DOCUMENT_BYTES, DocumentTooLarge, read_document
from featstore.store.layout import COMPLETE, FORMAT_VERSION
from featstore.store.location import StoreLocation, as_store_error, store_errors

ROOT = "zarr.json"
MANIFEST = "manifest"
SEAL = "seal"
READ_BLOCK = 16 << 20


@dataclass(frozen=True)
class SplitRef:
    """Which stored split a message is about."""

    model: str
    dataset: str
    split: str

    def __str__(self) -> str:
        return f"{self.dataset}/{self.split} of {self.model}"


class DamagedSplit(FeatstoreError):
    """A stored split that cannot be read as it was written; `problem` says which file and how."""

    def __init__(self, split: SplitRef, problem: str):
        super().__init__(
            f"the stored features of {split} are damaged: {problem}; `featstore verify --model "
            f"{split.model} --datasets {split.dataset}` lists the damage and the command that repairs it"
        )
        self.split, self.problem = split, problem

    def __reduce__(self):  # rebuilt from its fields, so it crosses process boundaries (report workers)
        return DamagedSplit, (self.split, self.problem)


def checksum(data: bytes | np.ndarray) -> int:
    """crc32c, the checksum zarr's `crc32c` codec and sharding index use."""
    return int(google_crc32c.value(data))


def streamed_checksum(handle: IO[bytes]) -> tuple[int, int]:
    """The crc32c and length of what a binary file object holds, read in blocks (a shard never whole in memory)."""
    found, length = 0, 0
    while block := handle.read(READ_BLOCK):
        found, length = google_crc32c.extend(found, block), length + len(block)
    return int(found), length


def seal_value(document: dict) -> int:
    """The crc32c of a root document without its seal, in a canonical JSON form."""
    attributes = {k: v for k, v in document.get("attributes", {}).items() if k != SEAL}
    unsealed = {**document, "attributes": attributes}
    return checksum(json.dumps(unsealed, sort_keys=True, separators=(",", ":")).encode())


class RecordingStore(WrapperStore[Store]):
    """A writable store that records each file written below the root in `manifest` as [size, crc32c, shard],
    with `shard` the shard its writes belong to (None for metadata and the row index)."""

    def __init__(self, store: Store, manifest: dict[str, list] | None = None, shard: int | None = None):
        super().__init__(store)
        self.manifest = {} if manifest is None else manifest
        self.shard = shard

    def _with_store(self, store: Store) -> RecordingStore:
        return RecordingStore(store, self.manifest, self.shard)

    async def set(self, key: str, value: Buffer) -> None:
        await self._store.set(key, value)
        self._record(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self._store.set_if_not_exists(key, value)
        self._record(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        for key, value in values:
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        await self._store.delete(key)
        self.manifest.pop(key, None)

    def _record(self, key: str, value: Buffer) -> None:
        if key != ROOT:
            data = value.as_numpy_array()
            self.manifest[key] = [int(data.nbytes), checksum(data), self.shard]


class IntegrityStore(WrapperStore[Store]):
    """A read-only view of a sealed split that raises `DamagedSplit` instead of returning damaged bytes; its
    listings come from the manifest, so opening a split never lists a folder or a bucket."""

    def __init__(self, store: Store, split: SplitRef, root: bytes, manifest: dict[str, list]):
        super().__init__(store)
        self.split, self.root, self.manifest = split, root, manifest

    def _with_store(self, store: Store) -> IntegrityStore:
        return IntegrityStore(store, self.split, self.root, self.manifest)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        if key == ROOT:
            return prototype.buffer.from_bytes(self.root) if byte_range is None else None
        entry = self.manifest.get(key)
        if entry is None:
            return None  # never written: every value in it is the fill value
        if byte_range is None and key.endswith(ROOT) and entry[0] > MAX_DOCUMENT_BYTES:
            raise DamagedSplit(self.split, f"{key} is listed at {entry[0]} bytes, more than any metadata document")
        # a whole file is read to at most one byte past its recorded size: a padded file costs no more than that
        bounded = RangeByteRequest(0, entry[0] + 1) if byte_range is None else byte_range
        try:
            found = await self._store.get(key, prototype=prototype, byte_range=bounded)
        except Exception as err:
            mapped = as_store_error(err, f"holding {self.split}")  # unreachable, denied: not damage
            if mapped is not None:
                raise mapped from None
            if not isinstance(err, OSError):
                raise
            raise DamagedSplit(self.split, f"{key} cannot be read ({err.strerror or err})") from None
        return await asyncio.to_thread(self._verified, key, entry, found, byte_range)

    def _verified(self, key: str, entry: list, found: Buffer | None, byte_range: ByteRequest | None) -> Buffer:
        """Check what was read (in a worker thread, keeping the checksums off zarr's event loop)."""
        if found is None:
            raise DamagedSplit(self.split, f"{key} is missing")
        data = found.as_numpy_array()
        if byte_range is None:
            if data.nbytes != entry[0] or checksum(data) != entry[1]:
                raise DamagedSplit(self.split, f"{key} does not match its checksum")
        elif not _ends_with_its_crc(data, byte_range):
            raise DamagedSplit(self.split, f"{key} ({_describe(byte_range)}) does not match its checksum")
        return found

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        return key == ROOT or key in self.manifest

    async def list(self) -> AsyncIterator[str]:
        for key in self._keys():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._keys():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        children = {key[len(prefix) :].split("/", 1)[0] for key in self._keys() if key.startswith(prefix)}
        for child in sorted(children):
            yield child

    def _keys(self) -> list[str]:
        return [ROOT, *self.manifest]


def _ends_with_its_crc(data: np.ndarray, byte_range: ByteRequest) -> bool:
    """Whether a part of a shard is whole and ends with the crc32c of what precedes it."""
    if isinstance(byte_range, RangeByteRequest) and data.nbytes != byte_range.end - byte_range.start:
        return False
    return data.nbytes >= 4 and checksum(data[:-4]) == int.from_bytes(data[-4:].tobytes(), "little")


def _describe(byte_range: ByteRequest) -> str:
    if isinstance(byte_range, RangeByteRequest):
        return f"the chunk at bytes {byte_range.start}-{byte_range.end}"
    if isinstance(byte_range, SuffixByteRequest):
        return f"its shard index, the last {byte_range.suffix} bytes"
    return str(byte_range)


def read_sealed_root(location: StoreLocation, key: str, split: SplitRef) -> tuple[bytes, dict]:
    """The root document (bytes and parsed) of the split version at `key`, checked against its seal and the
    store format."""
    try:
        raw = read_document(location, f"{key}/{ROOT}")
    except DocumentTooLarge as err:
        raise DamagedSplit(split, str(err)) from None
    except OSError as err:
        raise DamagedSplit(split, f"{location.describe(key)}/{ROOT} cannot be read ({err.strerror})") from None
    if raw is None:
        raise DamagedSplit(split, f"{ROOT} is missing from {location.describe(key)}")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise DamagedSplit(split, f"{ROOT} is not valid JSON") from None
    attributes = document.get("attributes") if isinstance(document, dict) else None
    if not isinstance(attributes, dict):
        raise DamagedSplit(split, f"{ROOT} has no attributes")
    if attributes.get("format") != FORMAT_VERSION:
        raise DamagedSplit(
            split,
            f"it was written in store format {attributes.get('format')!r}, which has no "
            f"checksums (this featstore reads format {FORMAT_VERSION})",
        )
    if attributes.get(SEAL) != seal_value(document) or not isinstance(attributes.get(MANIFEST), dict):
        raise DamagedSplit(split, f"{ROOT} does not match its seal")
    return raw, document


def open_split_store(
    location: StoreLocation, key: str, split: SplitRef, root: tuple[bytes, dict] | None = None
) -> IntegrityStore:
    """A verifying, read-only zarr store over one published split version (for `xr.open_zarr` or
    `zarr.open_group`); `root`: its root as `read_sealed_root` already read it, so it is not read again."""
    raw, document = root or read_sealed_root(location, key, split)
    return IntegrityStore(location.zarr_store(key, read_only=True), split, raw, document["attributes"][MANIFEST])


@dataclass(frozen=True)
class Damage:
    """What is wrong with one split and what rebuilds it: some shards, or (`shards` None) the whole split."""

    split: SplitRef
    problems: list[str]
    shards: frozenset[int] | None


def verify_split(
    location: StoreLocation, key: str, split: SplitRef, root: tuple[bytes, dict] | None = None
) -> Damage | None:
    """Check the split version at `key`: its seal, that it holds the features of `split` (not of another split
    swapped in), its `COMPLETE` marker and every file its manifest lists, read whole; None when all match.
    `root`: its root as `read_sealed_root` already read it, so it is not read again."""
    if root is None:
        try:
            root = read_sealed_root(location, key, split)
        except DamagedSplit as err:
            return Damage(split, [err.problem], None)
    _, document = root
    if problem := _identity_problem(key, document["attributes"], split):
        return Damage(split, [problem], None)
    problems, shards = [], set()
    if not location.exists(f"{key}/{COMPLETE}"):
        problems.append(f"its {COMPLETE} marker is missing")
        shards.add(None)
    for name, (size, crc, shard) in document["attributes"][MANIFEST].items():
        problem = _file_problem(location, f"{key}/{name}", size, crc)
        if problem:
            problems.append(f"{name} {problem}")
            shards.add(shard)
    if not problems:
        return None
    return Damage(split, problems, None if None in shards else frozenset(shards))


def _identity_problem(key: str, attributes: dict, split: SplitRef) -> str | None:
    """What differs between the model, dataset and split a version records and the split it is read as."""
    model = attributes.get("model")
    recorded = (
        model.get("key") if isinstance(model, dict) else None,
        attributes.get("dataset"),
        attributes.get("split"),
    )
    if recorded == (split.model, split.dataset, split.split):
        return None
    held = f"{'/'.join(map(str, recorded[1:]))} of {recorded[0]}"
    return f"{key} holds the features of {held}, not of the split its catalog row names"


def _file_problem(location: StoreLocation, key: str, size: int, crc: int) -> str | None:
    try:
        with store_errors(location), location.open(key) as handle:
            found, length = streamed_checksum(handle)
    except FileNotFoundError:
        return "is missing"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if length != size:
        return f"has {length} bytes, not {size}"
    return None if found == crc else "does not match its checksum"
