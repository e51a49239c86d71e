"""Lazy xarray views of one stored split, labelled from the catalog and optionally filtered by SQL."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import xarray as xr

from featstore.catalog.database import catalog_reader
from featstore.catalog.features import dataset_splits, split_labels
from featstore.catalog.names import DatasetNames, did_you_mean, unknown_model
from featstore.catalog.safe_sql import CatalogReader, examples_where
from featstore.catalog.splits import FEATURE_SPLITS
from featstore.errors import FeatstoreError
from featstore.project import Project
from featstore.store.integrity import MANIFEST, SEAL, SplitRef, open_split_store, read_sealed_root
from featstore.store.layout import SHARD_EXAMPLES
from featstore.views import aggregations  # noqa: F401  (registers the .masked accessor on every view)

DASK_CHUNKS = {"layer": 1, "head": -1, "token": -1, "d_model": -1}  # and whole shards of examples, see below
# The most bytes of one layer of a feature array in one dask chunk: whole shards of examples up to this size, so a
# one-layer read is a few tasks, not one per shard (dask's per-task cost dominated: 1,000 smollm2 examples, layer
# 15 of the test split, 22 ms in 8 tasks against 11 ms for zarr alone), with each task's memory still bounded.
VIEW_CHUNK_BYTES = 16 * 2**20


class Kept:
    """What this process read once and keeps by key, the oldest dropped beyond `most`; safe across threads."""

    def __init__(self, most: int):
        self.most, self._kept, self._lock = most, {}, threading.Lock()

    def get(self, key: tuple) -> Any:
        with self._lock:
            return self._kept.get(key)

    def put(self, key: tuple, value: Any) -> None:
        with self._lock:
            while len(self._kept) >= self.most:
                self._kept.pop(next(iter(self._kept)))
            self._kept[key] = value

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


_CATALOG_ENTRIES = Kept(256)  # by catalog file state and the split asked for
_STORED_SPLITS = Kept(64)  # by split version location and the digest of its sealed root


def resolve_split(con: duckdb.DuckDBPyConnection, dataset: str, split: str, model: str | None) -> tuple[str, str, str]:
    """The dataset's name, the model key and the store-relative path of a complete split (the dataset named as
    `featstore.catalog.names` resolves it); with no model given, the only one built. Unknown names are errors."""
    splits = dataset_splits(con)
    dataset = DatasetNames.from_frame(splits.drop_duplicates("name")).resolve(dataset)
    if split not in FEATURE_SPLITS:
        raise FeatstoreError(
            f"no split {split!r}: features are built for {' and '.join(FEATURE_SPLITS)}"
            f"{did_you_mean(split, FEATURE_SPLITS)}"
        )
    if model is not None and model not in set(splits["model"].dropna()):
        raise unknown_model(model, sorted(set(splits["model"].dropna())))
    built = splits[(splits["name"] == dataset) & (splits["split"] == split)]
    if model is not None:
        built = built[built["model"] == model]
    if built.empty:
        which = f"model {model!r}" if model else "any model"
        raise FeatstoreError(f"no complete features of {dataset}/{split} for {which}; run `featstore build` first")
    if len(built) > 1:
        raise FeatstoreError(
            f"{dataset}/{split} has features of several models ({', '.join(built['model'])}); pass model="
        )
    return dataset, str(built["model"].iloc[0]), str(built["path"].iloc[0])


def open_view(
    project: Project,
    dataset: str,
    split: str,
    model: str | None = None,
    layers: Sequence[int] | None = None,
    where: str | None = None,
    reader: CatalogReader | None = None,
    dask: bool = True,
) -> xr.Dataset:
    """`attn`, `resid` and `tokens` of one split as lazy dask arrays; nothing of other splits is opened.

    `where` is a SQL condition over the columns of `examples` and `features` (e.g. `seq_len < 64`,
    `label = 1`, `prompt ILIKE '%war%'`); it runs on the same locked-down connection as `featstore sql`.
    Catalog reads go through `reader` when given (a connection shared by a batch of reads). With
    `dask=False` the arrays stay lazy but an index goes straight to zarr: faster for a few examples.
    """
    dataset, key, path, labels = _catalog_entry(project, dataset, split, model, reader)
    stored = _stored_split(project, path, SplitRef(key, dataset, split), dask)
    example_ids = stored["example_id"].values
    if len(labels) != len(example_ids) or not labels.index.isin(example_ids).all():
        raise FeatstoreError(f"the catalog no longer matches the stored {dataset}/{split} of {key}; rebuild it")
    view = stored.assign_coords(label=("example", _read_only(labels.reindex(example_ids).to_numpy(dtype=np.int8))))
    view.attrs = {**stored.attrs, "model": key, "dataset": dataset, "split": split}
    if layers is not None:
        view = _select_layers(view, layers)
    if where is not None:
        view = _select_where(project, reader, view, key, dataset, split, where)
    return view


def _stored_split(project: Project, path: str, split: SplitRef, dask: bool) -> xr.Dataset:
    """The split version at `path` opened as a labelled dataset (coordinates in memory, features lazy), kept per
    content of its sealed root document: opened again while the root is unchanged, its zarr metadata, row index and
    dask graph are not read or built again (they were 12-16 ms of a 35 ms one-layer read of 1,000 examples). Every
    chunk read still checks its crc32c against the manifest of that root."""
    root = read_sealed_root(project.store, path, split)
    cache_key = (project.store.describe(path), hashlib.blake2b(root[0]).digest(), dask)
    if (kept := _STORED_SPLITS.get(cache_key)) is not None:
        return kept
    store = open_split_store(project.store, path, split, root)
    # opened without dask, so the small index arrays below are read straight from zarr (through dask each read
    # cost ~7 ms of graph building and scheduling); only the feature arrays are chunked afterwards
    opened = xr.open_zarr(store, consolidated=False, chunks=None, zarr_format=3)
    example_ids = _read_only(opened["example_id"].values)
    stored = opened.drop_vars(["example_id", "seq_len"]).assign_coords(
        example=example_ids,
        example_id=("example", example_ids),
        seq_len=("example", _read_only(opened["seq_len"].values)),
        layer=_read_only(np.arange(opened.sizes["layer"])),
        head=_read_only(np.arange(opened.sizes["head"])),
        token=_read_only(np.arange(opened.sizes["token"])),
    )
    if dask:  # the feature arrays only (coordinates stay in memory), named by the split version's location: dask
        # would otherwise name each by pickling its store, manifest included (~20 ms a view)
        chunks = {**DASK_CHUNKS, "example": example_chunk(stored)}
        stored = stored.assign(
            {
                name: array.chunk({dim: chunks[dim] for dim in array.dims}, token=f"{cache_key[0]}/{name}")
                for name, array in stored.data_vars.items()
            }
        )
    stored.attrs = {name: value for name, value in stored.attrs.items() if name not in (MANIFEST, SEAL)}
    _STORED_SPLITS.put(cache_key, stored)
    return stored


def _read_only(values: np.ndarray) -> np.ndarray:
    """`values`, no longer writable in place (a kept split's coordinates are shared by every view of it)."""
    values.flags.writeable = False
    return values


def example_chunk(view: xr.Dataset) -> int:
    """Examples per dask chunk: as many whole shards as keep one layer of the widest feature array within
    `VIEW_CHUNK_BYTES` (at least one shard)."""
    widest = max(
        array.dtype.itemsize * math.prod(size for dim, size in array.sizes.items() if dim not in ("example", "layer"))
        for array in view.data_vars.values()
    )
    return SHARD_EXAMPLES * max(1, VIEW_CHUNK_BYTES // (widest * SHARD_EXAMPLES))


def _catalog_entry(
    project: Project, dataset: str, split: str, model: str | None, reader: CatalogReader | None
) -> tuple[str, str, str, pd.Series]:
    """`resolve_split`'s answer and the split's labels by example_id, read once per state of the catalog file:
    a view opened again while the catalog is unchanged (same inode, size and modification time,
    write-ahead log included) costs no catalog connection (opening one and its two queries took 20-40 ms)."""
    cache_key = (str(project.catalog_path), _file_state(project.catalog_path), dataset, split, model)
    if (kept := _CATALOG_ENTRIES.get(cache_key)) is not None:
        return kept
    with catalog_reader(project, shared=reader.con if reader is not None else None) as con:
        name, key, path = resolve_split(con, dataset, split, model)
        labels = split_labels(con, SplitRef(key, name, split))
    _CATALOG_ENTRIES.put(cache_key, (name, key, path, labels))
    return name, key, path, labels


def forget_opened_views() -> None:
    """Drop the catalog entries kept by `_catalog_entry` and the splits kept by `_stored_split`: the next view of
    each split reads the catalog and the store again (to time a first opening)."""
    _CATALOG_ENTRIES.clear()
    _STORED_SPLITS.clear()


def _file_state(catalog: Path) -> tuple:
    """What changes whenever DuckDB writes the catalog: inode, size and mtime of the file and of its write-ahead log."""
    state = []
    for file in (catalog, catalog.with_name(catalog.name + ".wal")):
        try:
            status = file.stat()
        except FileNotFoundError:
            state.append(None)
        else:
            state.append((status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(state)


def layer_indices(layers: Sequence[int], n_layers: int, model: str) -> list[int]:
    """Layer numbers checked against the model's depth; negative ones count from the end."""
    if isinstance(layers, (int, str)) or not all(isinstance(layer, (int, np.integer)) for layer in layers):
        raise FeatstoreError(f"layers must be a list of layer numbers, got {layers!r}")
    bad = [int(layer) for layer in layers if not -n_layers <= layer < n_layers]
    if bad:
        raise FeatstoreError(f"layer {bad[0]} does not exist: {model} has layers 0..{n_layers - 1}")
    return [int(layer) % n_layers for layer in layers]


def _select_layers(view: xr.Dataset, layers: Sequence[int]) -> xr.Dataset:
    return view.isel(layer=layer_indices(layers, view.sizes["layer"], view.attrs["model"]))


def _select_where(
    project: Project, reader: CatalogReader | None, view: xr.Dataset, key: str, dataset: str, split: str, where: str
) -> xr.Dataset:
    chosen = examples_where(project.catalog_path, key, dataset, split, where, reader)
    return view.isel(example=np.flatnonzero(np.isin(view["example_id"].values, chosen)))
