"""The Python entry point: `open_store(root)` gives SQL over the catalog, views of the features and saved probes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import xarray as xr

from featstore.catalog.database import catalog_reader
from featstore.catalog.probe_records import probe_path
from featstore.catalog.safe_sql import CatalogReader, query_catalog
from featstore.errors import FeatstoreError
from featstore.project import Project, open_project
from featstore.views.view import open_view


class Store:
    """A project's catalog and feature store, opened read-only."""

    def __init__(self, project: Project, reader: CatalogReader | None = None):
        self.project = project
        self.reader = reader

    def sql(self, query: str, params: Sequence | Mapping | None = None) -> pd.DataFrame:
        """Run the user's one read-only select statement over the catalog and return its rows."""
        return query_catalog(self.project.catalog_path, query, params, self.reader)

    @contextmanager
    def reading(self) -> Iterator[Store]:
        """This store with one catalog connection shared by its queries and views, for a batch of reads
        (each query otherwise opens its own); writers wait until the block ends."""
        with CatalogReader(self.project.catalog_path) as reader:
            yield Store(self.project, reader)

    def view(
        self,
        dataset: str,
        split: str,
        model: str | None = None,
        layers: Sequence[int] | None = None,
        where: str | None = None,
        dask: bool = True,
    ) -> xr.Dataset:
        """A lazy xarray view of one split's features (see `featstore.views.view.open_view`)."""
        return open_view(
            self.project, dataset, split, model=model, layers=layers, where=where, reader=self.reader, dask=dask
        )

    def probe(self, result_id: str):
        """The fitted probe saved for a row of `probe_results` (read as arrays and checked values, never
        unpickled; see probes.saved)."""
        from featstore.probing.saved_probes import read_probe

        with catalog_reader(self.project, shared=self.reader.con if self.reader is not None else None) as con:
            found = probe_path(con, result_id)
        if found is None:
            raise FeatstoreError(f"no probe result {result_id!r}; `featstore results` lists them")
        return read_probe(self.project, found)

    def compare(
        self, reference: str = "baseline", model: str | None = None, datasets: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Every probe setting against `reference` (baseline, length or a setting label) on the same test examples:
        per dataset ΔAUC, its paired DeLong interval, p-value and Holm-adjusted p (see featstore.probing.compare);
        `across_datasets` of that module summarises it per setting."""
        from featstore.probing.compare import paired_comparisons
        from featstore.probing.results import result_rows

        rows = result_rows(self.project, model, list(datasets) if datasets else None)
        return paired_comparisons(self.project, rows, reference)


def open_store(root: str | Path = ".", store: str | None = None) -> Store:
    """Open the project at `root` (a directory holding `datasets/main.csv`); its features are read from `store`
    (a folder or URL) when given, else from where the project's settings say (see `open_project`)."""
    return Store(open_project(root, store))
