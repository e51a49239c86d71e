"""Lazy xarray views of one stored split, labelled from the catalog and optionally filtered by SQL."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from featstore.catalog.names import DatasetNames, did_you_mean, unknown_model
from featstore.catalog.safe_sql import CatalogReader, query_catalog
from featstore.catalog.splits import FEATURE_SPLITS
from featstore.errors import FeatstoreError
from featstore.project import Project
from featstore.store.integrity import MANIFEST, SEAL, SplitRef, open_split_store
from featstore.views import aggregations  # noqa: F401  (registers the .masked accessor on every view)

DASK_CHUNKS = {"example": 128, "layer": 1, "head": -1, "token": -1, "d_model": -1}


def resolve_split(project: Project, dataset: str, split: str, model: str | None,
                  reader: CatalogReader | None = None) -> tuple[str, str, str]:
    """The dataset's name, the model key and the store-relative path of a complete split (the dataset named as
    `featstore.catalog.names` resolves it); with no model given, the only one built. Unknown names are errors."""
    splits = query_catalog(
        project.catalog_path,
        "SELECT d.name, d.number, d.tag, s.model, s.split, s.path FROM datasets d LEFT JOIN feature_splits s "
        "ON s.dataset = d.name AND s.status = 'complete' ORDER BY d.number, s.model",
        reader=reader,
    )
    dataset = DatasetNames.from_frame(splits.drop_duplicates("name")).resolve(dataset)
    if split not in FEATURE_SPLITS:
        raise FeatstoreError(f"no split {split!r}: features are built for {' and '.join(FEATURE_SPLITS)}"
                             f"{did_you_mean(split, FEATURE_SPLITS)}")
    if model is not None and model not in set(splits["model"].dropna()):
        raise unknown_model(model, sorted(set(splits["model"].dropna())))
    built = splits[(splits["name"] == dataset) & (splits["split"] == split)]
    if model is not None:
        built = built[built["model"] == model]
    if built.empty:
        which = f"model {model!r}" if model else "any model"
        raise FeatstoreError(f"no complete features of {dataset}/{split} for {which}; run `featstore build` first")
    if len(built) > 1:
        raise FeatstoreError(f"{dataset}/{split} has features of several models ({', '.join(built['model'])}); pass model=")
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
    if reader is None:  # one connection for the view's few catalog reads (opening one costs ~30 ms)
        with CatalogReader(project.catalog_path) as own:
            return open_view(project, dataset, split, model, layers, where, own, dask)
    dataset, key, path = resolve_split(project, dataset, split, model, reader)
    store = open_split_store(project.store, path, SplitRef(key, dataset, split))
    view = xr.open_zarr(store, consolidated=False, chunks=DASK_CHUNKS if dask else None,
                        zarr_format=3)
    example_ids = view["example_id"].values
    labels = query_catalog(
        project.catalog_path,
        "SELECT f.example_id, e.label FROM features f JOIN examples e USING (example_id, dataset, split) "
        "WHERE f.model = ? AND f.dataset = ? AND f.split = ?",
        [key, dataset, split],
        reader,
    ).set_index("example_id")["label"]
    if len(labels) != len(example_ids) or not labels.index.isin(example_ids).all():
        raise FeatstoreError(f"the catalog no longer matches the stored {dataset}/{split} of {key}; rebuild it")
    view = view.drop_vars(["example_id", "seq_len"]).assign_coords(
        example=example_ids,
        example_id=("example", example_ids),
        seq_len=("example", view["seq_len"].values),
        label=("example", labels.reindex(example_ids).to_numpy(dtype=np.int8)),
        layer=np.arange(view.sizes["layer"]),
        head=np.arange(view.sizes["head"]),
        token=np.arange(view.sizes["token"]),
    )
    view.attrs = {name: value for name, value in view.attrs.items() if name not in (MANIFEST, SEAL)}
    view.attrs.update({"model": key, "dataset": dataset, "split": split})
    if layers is not None:
        view = _select_layers(view, layers)
    if where is not None:
        view = _select_where(project, reader, view, key, dataset, split, where)
    return view


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


def _select_where(project: Project, reader: CatalogReader | None, view: xr.Dataset, key: str, dataset: str,
                  split: str, where: str) -> xr.Dataset:
    chosen = query_catalog(
        project.catalog_path,
        "SELECT example_id FROM features f JOIN examples e USING (example_id, dataset, split) "
        f"WHERE model = $model AND dataset = $dataset AND split = $split AND ({where})",
        {"model": key, "dataset": dataset, "split": split},
        reader,
    )["example_id"].to_numpy()
    return view.isel(example=np.flatnonzero(np.isin(view["example_id"].values, chosen)))
