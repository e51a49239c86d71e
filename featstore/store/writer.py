"""Writes one split as a new version folder, whole shards at a time, then publishes it.

Each build writes `features.zarr/<model>/<dataset>/<split>/<version>/`; its root records how many shards are
done and the manifest of every file written (see `featstore.store.integrity`), so a killed build resumes
where it stopped. Publishing seals the root and writes a `COMPLETE` marker last; the split becomes visible
only when the catalog points to the version, and older versions are deleted only after that (`retire`), so
a reader never sees a mixture. Nothing is renamed: the same steps work on a folder and in a bucket. A repair
copies a published version into a new one without its damaged shards and writes only those again.
"""

from __future__ import annotations

import json
from collections.abc import Collection

import numpy as np
import zarr
import zarr.errors

from featstore.errors import FeatstoreError
from featstore.store.integrity import MANIFEST, ROOT, SEAL, RecordingStore, seal_value
from featstore.store.layout import COMPLETE, FORMAT_VERSION, SplitShape, compressors, new_version
from featstore.store.location import StoreLocation

REPAIRING = "repairing"


class SplitWriter:
    """The arrays of one split being built under `prefix`; `build_key` identifies compatible partial work to
    resume (an unpublished version with the same key)."""

    def __init__(self, location: StoreLocation, prefix: str, shape: SplitShape, attrs: dict, build_key: str,
                 version: str | None = None):
        self.location, self.prefix, self.shape = location, prefix, shape
        if version is None:
            version = _resumable_version(location, prefix, build_key)
        if version is not None:
            self.key = f"{prefix}/{version}"
            self.group = zarr.open_group(RecordingStore(location.zarr_store(self.key, read_only=False)), mode="r+")
            self.recorder.manifest.update(self.group.attrs[MANIFEST])
            return
        self.key = f"{prefix}/{new_version()}"
        self.group = zarr.open_group(RecordingStore(location.zarr_store(self.key, read_only=False)), mode="w",
                                     zarr_format=3)
        for name, spec in shape.arrays().items():
            self.group.create_array(name, fill_value=0, compressors=compressors(spec["dtype"]), **spec)
        self.group.attrs.update({**attrs, "build_key": build_key, "shards_done": 0, "complete": False,
                                 "format": FORMAT_VERSION, MANIFEST: self.recorder.manifest})

    @classmethod
    def repairing(cls, location: StoreLocation, published: str, shape: SplitShape, build_key: str,
                  shards: Collection[int]) -> SplitWriter | None:
        """A writer over a new version holding a copy of the published one (hard links locally, server-side
        copies in a bucket) without the files of `shards`, which it lists as pending; None when the published
        split was built from other inputs."""
        root = json.loads(location.read_bytes(f"{published}/{ROOT}") or b"{}")
        attrs = root.get("attributes", {})
        if attrs.get("build_key") != build_key:
            return None
        prefix = published.rsplit("/", 1)[0]
        version = new_version()
        kept = {key: entry for key, entry in attrs[MANIFEST].items() if entry[2] not in shards}
        location.copy((f"{published}/{key}", f"{prefix}/{version}/{key}") for key in kept)
        repaired = {**attrs, "complete": False, REPAIRING: sorted(shards), MANIFEST: kept}
        repaired.pop(SEAL, None)
        location.write_bytes(f"{prefix}/{version}/{ROOT}", json.dumps({**root, "attributes": repaired}).encode())
        return cls(location, prefix, shape, {}, build_key, version=version)

    @property
    def recorder(self) -> RecordingStore:
        return self.group.store

    @property
    def shards_done(self) -> int:
        return int(self.group.attrs["shards_done"])

    @property
    def pending_shards(self) -> list[int]:
        """The shards still to write: those being repaired, then those after the last one written."""
        return [*self.group.attrs.get(REPAIRING, []), *range(self.shards_done, self.shape.n_shards)]

    def write_index(self, example_ids: np.ndarray, seq_lens: np.ndarray) -> None:
        """Row order and lengths: known before any forward pass."""
        self.group["example_id"][:] = example_ids
        self.group["seq_len"][:] = seq_lens
        self.group.attrs[MANIFEST] = self.recorder.manifest

    def write_shard(self, shard: int, attn: np.ndarray, resid: np.ndarray, tokens: np.ndarray) -> None:
        """Write shard `shard` (rows in length order, narrower than the split on the token axis) and record it done."""
        if shard != self.shards_done and shard not in self.group.attrs.get(REPAIRING, []):
            raise FeatstoreError(f"shard {shard} of {self.key} written out of order (next: {self.shards_done})")
        rows = self.shape.shard_rows(shard)
        store = RecordingStore(self.location.zarr_store(self.key, read_only=False), self.recorder.manifest, shard)
        arrays = zarr.open_group(store, mode="r+")
        arrays["attn"][rows, :, :, : attn.shape[-1]] = attn
        arrays["resid"][rows] = resid
        arrays["tokens"][rows, : tokens.shape[-1]] = tokens
        done = {"shards_done": max(self.shards_done, shard + 1), MANIFEST: self.recorder.manifest}
        if REPAIRING in self.group.attrs:
            done[REPAIRING] = [s for s in self.group.attrs[REPAIRING] if s != shard]
        self.group.attrs.update(done)

    def publish(self) -> str:
        """Mark the split complete, seal its root document and write the `COMPLETE` marker last; returns the
        version's key, which the catalog then points to."""
        if self.pending_shards:
            raise FeatstoreError(f"{self.key} cannot be published: shards {self.pending_shards} are not written")
        self.group.attrs.update({"complete": True, MANIFEST: self.recorder.manifest})
        if REPAIRING in self.group.attrs:
            del self.group.attrs[REPAIRING]
        self.group.attrs[SEAL] = seal_value(json.loads(self.location.read_bytes(f"{self.key}/{ROOT}")))
        self.location.write_bytes(f"{self.key}/{COMPLETE}", b"")
        return self.key


def retire_versions(location: StoreLocation, prefix: str, current: str) -> None:
    """Delete every version of a split but `current` (the one the catalog points to), and files of the layout
    before versions (a split written straight into `prefix`)."""
    for name in location.children(prefix):
        if f"{prefix}/{name}" != current:
            if location.exists(f"{prefix}/{name}"):
                location.delete([f"{prefix}/{name}"])
            else:
                location.delete_folder(f"{prefix}/{name}")


def _resumable_version(location: StoreLocation, prefix: str, build_key: str) -> str | None:
    """An unpublished version of this split built from the same inputs, if any; other unpublished versions
    (killed builds of other inputs) are deleted."""
    found = None
    for name in location.children(prefix):
        if not name.startswith("v") or location.exists(f"{prefix}/{name}/{COMPLETE}"):
            continue
        attrs = json.loads(location.read_bytes(f"{prefix}/{name}/{ROOT}") or b"{}").get("attributes", {})
        if found is None and attrs.get("build_key") == build_key and attrs.get("format") == FORMAT_VERSION:
            found = name
        else:
            location.delete_folder(f"{prefix}/{name}")
    return found
