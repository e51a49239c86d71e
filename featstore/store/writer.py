"""Writes one split as a new version folder, whole shards at a time, then publishes it.

Each build writes `features.zarr/<model>/<dataset>/<split>/<version>/`; its root records which shards are
written and the manifest of every file written (see `featstore.store.integrity`), so a killed build resumes
where it stopped. Publishing seals the root and writes a `COMPLETE` marker last; the split becomes visible
only when the catalog points to the version, and older versions are deleted only after that (`retire`), so
a reader never sees a mixture. Nothing is renamed: the same steps work on a folder and in a bucket. A repair
copies a published version into a new one without its damaged shards and writes only those again.

Writing a shard has two halves: `write_shard_arrays` writes its arrays and returns their manifest entries
(a worker process can call it: it touches no root attribute), and `SplitWriter.record_shard` merges them into
the manifest and records the shard written (only the coordinator writes the root). Shards may be recorded in
any order, so a cluster's shards finishing out of order resume as well as a single process's.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from featstore.errors import FeatstoreError
from featstore.store.documents import DocumentTooLarge, read_document
from featstore.store.integrity import MANIFEST, ROOT, SEAL, RecordingStore, seal_value
from featstore.store.layout import COMPLETE, FORMAT_VERSION, SplitShape, compressors, is_version_name, new_version
from featstore.store.location import StoreLocation
from featstore.store.shard_encoding import shard_encoder

SHARDS_WRITTEN = "shards_written"
WRITTEN_ARRAYS = ("attn", "resid", "tokens")
UNVERSIONED_FOLDERS = frozenset(SplitShape(1, 1, 1, 1, 1).arrays())  # a split of the layout before versions
UNVERSIONED_FILES = frozenset({ROOT, COMPLETE})


class SplitWriter:
    """The arrays of one split being built under `prefix`; `build_key` identifies compatible partial work to
    resume (an unpublished version with the same key)."""

    def __init__(
        self,
        location: StoreLocation,
        prefix: str,
        shape: SplitShape,
        attrs: dict,
        build_key: str,
        version: str | None = None,
    ):
        self.location, self.prefix, self.shape = location, prefix, shape
        if version is None:
            version = _resumable_version(location, prefix, build_key)
        if version is not None:
            self.key = f"{prefix}/{version}"
            self.group = zarr.open_group(RecordingStore(location.zarr_store(self.key, read_only=False)), mode="r+")
            self.recorder.manifest.update(self.group.attrs[MANIFEST])
            return
        self.key = f"{prefix}/{new_version()}"
        self.group = zarr.open_group(
            RecordingStore(location.zarr_store(self.key, read_only=False)), mode="w", zarr_format=3
        )
        for name, spec in shape.arrays().items():
            self.group.create_array(
                name, fill_value=0, compressors=compressors(spec["dtype"], shape.chunking.clevel), **spec
            )
        self.group.attrs.update(
            {
                **attrs,
                "build_key": build_key,
                SHARDS_WRITTEN: [],
                "complete": False,
                "format": FORMAT_VERSION,
                MANIFEST: self.recorder.manifest,
            }
        )

    @classmethod
    def repairing(
        cls,
        location: StoreLocation,
        prefix: str,
        published: str,
        shape: SplitShape,
        build_key: str,
        shards: Collection[int],
    ) -> SplitWriter | None:
        """A writer over a new version in `prefix` holding a copy of the published version (hard links locally,
        server-side copies in a bucket) without the files of `shards`, which it lists as pending; None when the
        published split was built from other inputs."""
        root = _root_document(location, published)
        if root is None or root["attributes"].get("build_key") != build_key:
            return None
        attrs = root["attributes"]
        version = new_version()
        kept = {key: entry for key, entry in attrs[MANIFEST].items() if entry[2] not in shards}
        location.copy((f"{published}/{key}", f"{prefix}/{version}/{key}") for key in kept)
        intact = sorted(set(range(shape.n_shards)) - set(shards))
        repaired = {**attrs, "complete": False, SHARDS_WRITTEN: intact, MANIFEST: kept}
        repaired.pop(SEAL, None)
        location.write_bytes(f"{prefix}/{version}/{ROOT}", json.dumps({**root, "attributes": repaired}).encode())
        return cls(location, prefix, shape, {}, build_key, version=version)

    @property
    def recorder(self) -> RecordingStore:
        return self.group.store

    @property
    def shards_written(self) -> list[int]:
        """The shards whose arrays are written and recorded, ascending."""
        return list(self.group.attrs[SHARDS_WRITTEN])

    @property
    def pending_shards(self) -> list[int]:
        """The shards still to write (all but the written ones; after a repair's copy, the damaged ones)."""
        written = set(self.shards_written)
        return [shard for shard in range(self.shape.n_shards) if shard not in written]

    def write_index(self, example_ids: np.ndarray, seq_lens: np.ndarray) -> None:
        """Row order and lengths: known before any forward pass."""
        self.group["example_id"][:] = example_ids
        self.group["seq_len"][:] = seq_lens
        self.group.attrs[MANIFEST] = self.recorder.manifest

    def write_shard(self, shard: int, attn: np.ndarray, resid: np.ndarray, tokens: np.ndarray) -> None:
        """Write shard `shard` (rows in length order, narrower than the split on the token axis) and record it
        written: the single-process path, both halves in this process."""
        self.record_shard(shard, write_shard_arrays(self.location, self.key, self.shape, shard, attn, resid, tokens))

    def record_shard(self, shard: int, entries: dict[str, list]) -> None:
        """Merge a written shard's manifest entries and record it written, in one root-attribute write (the
        coordinator's half: workers never write the root)."""
        if shard not in self.pending_shards:
            raise FeatstoreError(f"shard {shard} of {self.key} is not pending (written: {self.shards_written})")
        self.recorder.manifest.update(entries)
        self.group.attrs.update(
            {SHARDS_WRITTEN: sorted([*self.shards_written, shard]), MANIFEST: self.recorder.manifest}
        )

    def publish(self) -> str:
        """Mark the split complete, seal its root document and write the `COMPLETE` marker last; returns the
        version's key, which the catalog then points to."""
        if self.pending_shards:
            raise FeatstoreError(f"{self.key} cannot be published: shards {self.pending_shards} are not written")
        self.group.attrs.update({"complete": True, MANIFEST: self.recorder.manifest})
        self.group.attrs[SEAL] = seal_value(json.loads(self.location.read_bytes(f"{self.key}/{ROOT}")))
        self.location.write_bytes(f"{self.key}/{COMPLETE}", b"")
        return self.key


class ShardQueue:
    """Writes a split's shards `workers` at a time in threads (zarr's Blosc encodes release the GIL), each shard
    whole by one thread; the coordinator (the caller) records each as it finishes, in any order. At most
    `workers + 1` shards are queued or being written: `put` waits for one to finish first, so memory stays
    within a few shards. `close` waits for the rest (and raises the first failure after the others have stopped),
    `abandon` stops, so a killed build has recorded exactly the shards fully written."""

    def __init__(self, writer: SplitWriter, workers: int):
        self.writer, self.limit = writer, workers + 1
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zarr-writer")
        self._running: dict[Future, int] = {}

    def close(self) -> None:
        """Wait for the shards still being written and record them (raising the first failure after the others
        have stopped)."""
        try:
            while self._running:
                self._record(wait(self._running, return_when=FIRST_COMPLETED).done)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def abandon(self) -> None:
        """Stop: the shards being written finish (unrecorded, so a resumed build writes them again), queued ones
        are dropped."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def record_written(self) -> None:
        """Record the shards written by now (the caller checks after each batch, so a kill loses little)."""
        self._record([future for future in self._running if future.done()])

    def put(self, shard: int, attn: np.ndarray, resid: np.ndarray, tokens: np.ndarray) -> None:
        """Queue shard `shard` for writing, first recording the shards already written (waiting for one while
        the queue is full)."""
        self.record_written()
        while len(self._running) >= self.limit:
            self._record(wait(self._running, return_when=FIRST_COMPLETED).done)
        writer = self.writer
        future = self._pool.submit(
            write_shard_arrays, writer.location, writer.key, writer.shape, shard, attn, resid, tokens
        )
        self._running[future] = shard

    def _record(self, finished: Collection[Future]) -> None:
        for future in sorted(finished, key=self._running.get):
            shard = self._running.pop(future)
            self.writer.record_shard(shard, future.result())


def write_shard_arrays(
    location: StoreLocation,
    key: str,
    shape: SplitShape,
    shard: int,
    attn: np.ndarray,
    resid: np.ndarray,
    tokens: np.ndarray,
) -> dict[str, list]:
    """Write one shard's arrays into the split version at `key`; return the manifest entries of the files
    written (key -> [size, crc32c, shard]). Opens the arrays alone, never the root document the coordinator
    rewrites. Files an earlier, killed attempt left of this shard are deleted first: zarr would merge a partial
    write into them."""
    target = location.zarr_store(key, read_only=False)
    for name in WRITTEN_ARRAYS:  # the shard's row of chunk files: <array>/c/<shard>/...
        sync(target.delete_dir(f"{name}/c/{shard}"))
    entries: dict[str, list] = {}
    store = RecordingStore(target, entries, shard)
    rows = shape.shard_rows(shard)
    arrays = {name: zarr.open_array(store, path=name, mode="r+") for name in WRITTEN_ARRAYS}
    for name, block in (("attn", attn), ("resid", resid)):
        encoder = shard_encoder(arrays[name]) if shape.chunking.direct else None
        if encoder is None:
            arrays[name][(rows, *(slice(0, n) for n in block.shape[1:]))] = block
        else:
            chunk_key = arrays[name].metadata.encode_chunk_key((shard, *[0] * (block.ndim - 1)))
            sync(store.set(f"{name}/{chunk_key}", default_buffer_prototype().buffer.from_bytes(encoder.encode(block))))
    arrays["tokens"][rows, : tokens.shape[-1]] = tokens
    return entries


def retire_versions(location: StoreLocation, prefix: str, current: str) -> None:
    """Delete the versions of a split but `current` (the one the catalog points to), and the files of the layout
    before versions (a split written straight into `prefix`): only names featstore makes, never anything else a
    folder holds."""
    for name in location.children(prefix):
        if f"{prefix}/{name}" == current:
            continue
        if is_version_name(name) or name in UNVERSIONED_FOLDERS:
            location.delete_folder(f"{prefix}/{name}")
        elif name in UNVERSIONED_FILES:
            location.delete([f"{prefix}/{name}"])


def _resumable_version(location: StoreLocation, prefix: str, build_key: str) -> str | None:
    """An unpublished version of this split built from the same inputs, if any; other unpublished versions
    (killed builds of other inputs) are deleted. Only folders named as `new_version` names them are looked at."""
    found = None
    for name in location.children(prefix):
        if not is_version_name(name) or location.exists(f"{prefix}/{name}/{COMPLETE}"):
            continue
        root = _root_document(location, f"{prefix}/{name}")
        attrs = {} if root is None else root["attributes"]
        if (
            found is None
            and attrs.get("build_key") == build_key
            and attrs.get("format") == FORMAT_VERSION
            and SHARDS_WRITTEN in attrs
        ):
            found = name
        else:
            location.delete_folder(f"{prefix}/{name}")
    return found


def _root_document(location: StoreLocation, version: str) -> dict | None:
    """The parsed root document of the split version at `version`; None when it is missing or damaged (too large,
    not JSON, no attributes object), so a killed build's unreadable root is neither resumed nor repaired from."""
    try:
        raw = read_document(location, f"{version}/{ROOT}")
        document = None if raw is None else json.loads(raw)
    except (DocumentTooLarge, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    attributes = document.get("attributes") if isinstance(document, dict) else None
    return document if isinstance(attributes, dict) else None
