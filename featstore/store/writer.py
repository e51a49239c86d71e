"""Writes one split into a hidden building directory, whole shards at a time, then publishes it.

The building directory records how many shards are done, so a killed build resumes where it
stopped; the split becomes visible (renamed to its final path) only once every shard is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr
import zarr.errors

from featstore.store.atomic import swap_folder
from featstore.store.layout import FORMAT_VERSION, SplitShape, building_path, compressor


class SplitWriter:
    """The arrays of one split being built; `build_key` identifies compatible partial work to resume."""

    def __init__(self, final: Path, shape: SplitShape, attrs: dict, build_key: str):
        self.final, self.shape = final, shape
        self.building = building_path(final)
        if self.building.exists():
            try:
                group = zarr.open_group(self.building, mode="r+")
            except (FileNotFoundError, zarr.errors.GroupNotFoundError):  # killed before its metadata was written
                group = None
            if group is not None and group.attrs.get("build_key") == build_key:
                self.group = group
                return
            shutil.rmtree(self.building)
        self.building.parent.mkdir(parents=True, exist_ok=True)
        self.group = zarr.open_group(self.building, mode="w", zarr_format=3)
        for name, spec in shape.arrays().items():
            codecs = {"compressors": compressor()} if spec["dtype"] == "float16" else {}
            self.group.create_array(name, fill_value=0, **spec, **codecs)
        self.group.attrs.update({**attrs, "build_key": build_key, "shards_done": 0, "complete": False,
                                 "format": FORMAT_VERSION})

    @property
    def shards_done(self) -> int:
        return int(self.group.attrs["shards_done"])

    def write_index(self, example_ids: np.ndarray, seq_lens: np.ndarray) -> None:
        """Row order and lengths: known before any forward pass."""
        self.group["example_id"][:] = example_ids
        self.group["seq_len"][:] = seq_lens

    def write_shard(self, shard: int, attn: np.ndarray, resid: np.ndarray, tokens: np.ndarray) -> None:
        """Write shard `shard` (rows in length order, narrower than the split on the token axis) and record it done."""
        rows = self.shape.shard_rows(shard)
        self.group["attn"][rows, :, :, : attn.shape[-1]] = attn
        self.group["resid"][rows] = resid
        self.group["tokens"][rows, : tokens.shape[-1]] = tokens
        self.group.attrs["shards_done"] = shard + 1

    def publish(self) -> None:
        """Mark the split complete and make it visible at its final path, replacing an older build."""
        self.group.attrs["complete"] = True
        swap_folder(self.building, self.final)
