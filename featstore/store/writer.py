"""Writes one split into a hidden building directory, whole shards at a time, then publishes it.

The building directory records which shards are written and the manifest of every file written (see
`featstore.store.integrity`), so a killed build resumes where it stopped; the split becomes visible (renamed
to its final path, its root sealed) only once every shard is written. A repair copies a published split into
the building directory without its damaged shards and writes only those again.

Writing a shard has two halves: `write_shard_arrays` writes its arrays and returns their manifest entries
(a worker process can call it: it touches no root attribute), and `SplitWriter.record_shard` merges them into
the manifest and records the shard written (only the coordinator writes the root). Shards may be recorded in
any order, so a cluster's shards finishing out of order resume as well as a single process's.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection
from pathlib import Path

import numpy as np
import zarr
import zarr.errors
from zarr.core.sync import sync
from zarr.storage import LocalStore

from featstore.errors import FeatstoreError
from featstore.store.atomic import swap_folder
from featstore.store.integrity import MANIFEST, ROOT, SEAL, RecordingStore, seal_value
from featstore.store.layout import FORMAT_VERSION, SplitShape, building_path, compressors

SHARDS_WRITTEN = "shards_written"
WRITTEN_ARRAYS = ("attn", "resid", "tokens")


class SplitWriter:
    """The arrays of one split being built; `build_key` identifies compatible partial work to resume."""

    def __init__(self, final: Path, shape: SplitShape, attrs: dict, build_key: str):
        self.final, self.shape = final, shape
        self.building = building_path(final)
        if self.building.exists():
            group = _open_resumable(self.building)
            if group is not None and group.attrs.get("build_key") == build_key \
                    and group.attrs.get("format") == FORMAT_VERSION and SHARDS_WRITTEN in group.attrs:
                self.group = group
                self.recorder.manifest.update(group.attrs[MANIFEST])
                return
            shutil.rmtree(self.building)
        self.building.parent.mkdir(parents=True, exist_ok=True)
        self.group = zarr.open_group(RecordingStore(LocalStore(self.building)), mode="w", zarr_format=3)
        for name, spec in shape.arrays().items():
            self.group.create_array(name, fill_value=0, compressors=compressors(spec["dtype"]), **spec)
        self.group.attrs.update({**attrs, "build_key": build_key, SHARDS_WRITTEN: [], "complete": False,
                                 "format": FORMAT_VERSION, MANIFEST: self.recorder.manifest})

    @classmethod
    def repairing(cls, final: Path, shape: SplitShape, build_key: str, shards: Collection[int]) -> SplitWriter | None:
        """A writer over a copy of the published split (files hard-linked) without the files of `shards`,
        which it lists as pending; None when the published split was built from other inputs."""
        building = building_path(final)
        shutil.rmtree(building, ignore_errors=True)
        shutil.copytree(final, building, copy_function=os.link)
        group = zarr.open_group(building, mode="r+")
        if group.attrs.get("build_key") != build_key:
            shutil.rmtree(building)
            return None
        manifest = dict(group.attrs[MANIFEST])
        kept = {key: entry for key, entry in manifest.items() if entry[2] not in shards}
        for key in manifest.keys() - kept.keys():
            (building / key).unlink(missing_ok=True)
        intact = sorted(set(range(shape.n_shards)) - set(shards))
        group.attrs.update({"complete": False, SHARDS_WRITTEN: intact, MANIFEST: kept})
        return cls(final, shape, {}, build_key)

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
        self.record_shard(shard, write_shard_arrays(self.building, self.shape, shard, attn, resid, tokens))

    def record_shard(self, shard: int, entries: dict[str, list]) -> None:
        """Merge a written shard's manifest entries and record it written, in one root-attribute write (the
        coordinator's half: workers never write the root)."""
        if shard not in self.pending_shards:
            raise FeatstoreError(f"shard {shard} of {self.final} is not pending (written: {self.shards_written})")
        self.recorder.manifest.update(entries)
        self.group.attrs.update({SHARDS_WRITTEN: sorted([*self.shards_written, shard]),
                                 MANIFEST: self.recorder.manifest})

    def publish(self) -> None:
        """Mark the split complete, seal its root document and make it visible at its final path, replacing
        an older build."""
        if self.pending_shards:
            raise FeatstoreError(f"{self.final} cannot be published: shards {self.pending_shards} are not written")
        self.group.attrs.update({"complete": True, MANIFEST: self.recorder.manifest})
        self.group.attrs[SEAL] = seal_value(json.loads((self.building / ROOT).read_bytes()))
        swap_folder(self.building, self.final)


def write_shard_arrays(building: Path, shape: SplitShape, shard: int, attn: np.ndarray, resid: np.ndarray,
                       tokens: np.ndarray) -> dict[str, list]:
    """Write one shard's arrays into a split's building folder; return the manifest entries of the files written
    (key -> [size, crc32c, shard]). Opens the arrays alone, never the root document the coordinator rewrites.
    Files an earlier, killed attempt left of this shard are deleted first: zarr would merge a partial write
    into them."""
    local = LocalStore(building)
    for name in WRITTEN_ARRAYS:  # the shard's row of chunk files: <array>/c/<shard>/...
        sync(local.delete_dir(f"{name}/c/{shard}"))
    entries: dict[str, list] = {}
    store = RecordingStore(local, entries, shard)
    rows = shape.shard_rows(shard)
    arrays = {name: zarr.open_array(store, path=name, mode="r+") for name in WRITTEN_ARRAYS}
    arrays["attn"][rows, :, :, : attn.shape[-1]] = attn
    arrays["resid"][rows] = resid
    arrays["tokens"][rows, : tokens.shape[-1]] = tokens
    return entries


def _open_resumable(building: Path) -> zarr.Group | None:
    try:
        return zarr.open_group(RecordingStore(LocalStore(building)), mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):  # killed before its metadata was written
        return None

