"""Writes one split into a hidden building directory, whole shards at a time, then publishes it.

The building directory records how many shards are done and the manifest of every file written (see
`featstore.store.integrity`), so a killed build resumes where it stopped; the split becomes visible (renamed
to its final path, its root sealed) only once every shard is written. A repair copies a published split into
the building directory without its damaged shards and writes only those again.
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
from zarr.storage import LocalStore

from featstore.errors import FeatstoreError
from featstore.store.atomic import swap_folder
from featstore.store.integrity import MANIFEST, ROOT, SEAL, RecordingStore, seal_value
from featstore.store.layout import FORMAT_VERSION, SplitShape, building_path, compressors

REPAIRING = "repairing"


class SplitWriter:
    """The arrays of one split being built; `build_key` identifies compatible partial work to resume."""

    def __init__(self, final: Path, shape: SplitShape, attrs: dict, build_key: str):
        self.final, self.shape = final, shape
        self.building = building_path(final)
        if self.building.exists():
            group = _open_resumable(self.building)
            if group is not None and group.attrs.get("build_key") == build_key \
                    and group.attrs.get("format") == FORMAT_VERSION:
                self.group = group
                self.recorder.manifest.update(group.attrs[MANIFEST])
                return
            shutil.rmtree(self.building)
        self.building.parent.mkdir(parents=True, exist_ok=True)
        self.group = zarr.open_group(RecordingStore(LocalStore(self.building)), mode="w", zarr_format=3)
        for name, spec in shape.arrays().items():
            self.group.create_array(name, fill_value=0, compressors=compressors(spec["dtype"]), **spec)
        self.group.attrs.update({**attrs, "build_key": build_key, "shards_done": 0, "complete": False,
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
        group.attrs.update({"complete": False, REPAIRING: sorted(shards), MANIFEST: kept})
        return cls(final, shape, {}, build_key)

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
            raise FeatstoreError(f"shard {shard} of {self.final} written out of order (next: {self.shards_done})")
        rows = self.shape.shard_rows(shard)
        arrays = zarr.open_group(RecordingStore(LocalStore(self.building), self.recorder.manifest, shard), mode="r+")
        arrays["attn"][rows, :, :, : attn.shape[-1]] = attn
        arrays["resid"][rows] = resid
        arrays["tokens"][rows, : tokens.shape[-1]] = tokens
        done = {"shards_done": max(self.shards_done, shard + 1), MANIFEST: self.recorder.manifest}
        if REPAIRING in self.group.attrs:
            done[REPAIRING] = [s for s in self.group.attrs[REPAIRING] if s != shard]
        self.group.attrs.update(done)

    def publish(self) -> None:
        """Mark the split complete, seal its root document and make it visible at its final path, replacing
        an older build."""
        if self.pending_shards:
            raise FeatstoreError(f"{self.final} cannot be published: shards {self.pending_shards} are not written")
        self.group.attrs.update({"complete": True, MANIFEST: self.recorder.manifest})
        if REPAIRING in self.group.attrs:
            del self.group.attrs[REPAIRING]
        self.group.attrs[SEAL] = seal_value(json.loads((self.building / ROOT).read_bytes()))
        swap_folder(self.building, self.final)


def _open_resumable(building: Path) -> zarr.Group | None:
    try:
        return zarr.open_group(RecordingStore(LocalStore(building)), mode="r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):  # killed before its metadata was written
        return None

