"""`featstore verify`: check every complete split the catalog lists, file by file, and say what to rebuild."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import zarr

from featstore.catalog.database import catalog_reader
from featstore.catalog.datasets import indexed_datasets
from featstore.catalog.features import complete_splits, example_order
from featstore.catalog.names import DatasetNames, unknown_model
from featstore.errors import FeatstoreError
from featstore.project import Project
from featstore.store.integrity import (
    Damage,
    DamagedSplit,
    IntegrityStore,
    SplitRef,
    open_split_store,
    read_sealed_root,
    verify_split,
)
from featstore.store.location import StoreLocation


def verify_store(
    project: Project, model: str | None = None, datasets: list[str] | None = None
) -> tuple[list[Damage], list[str]]:
    """The damaged splits among the complete ones of `model` and `datasets` (all by default), and the
    `featstore build --repair` commands (with the options the splits were built with) that fix them."""
    if not project.catalog_path.exists():
        raise FeatstoreError("the catalog is empty; nothing is built to verify")
    with catalog_reader(project) as con:  # every catalog read on one connection, let go before any file is read
        splits = _chosen_splits(con, model, datasets)
        listed = {split: example_order(con, split) for split in map(_split_ref, splits.itertuples())}
    damaged, commands = [], {}
    for row in splits.itertuples():
        split = _split_ref(row)
        if (damage := _split_damage(project.store, row.path, split, listed[split])) is not None:
            damaged.append(damage)
            command = (
                f"featstore build --repair --model {row.model}{_build_options(json.loads(row.settings))} --datasets"
            )
            commands.setdefault(command, {})[row.dataset] = None
    return damaged, [f"{command} {' '.join(names)}" for command, names in commands.items()]


def _chosen_splits(con: duckdb.DuckDBPyConnection, model: str | None, datasets: list[str] | None) -> pd.DataFrame:
    """The complete splits of `model` and `datasets` (all by default), or an error naming what matched none."""
    splits = complete_splits(con)
    if model is not None:
        if model not in set(splits["model"]):
            raise unknown_model(model, sorted(set(splits["model"])))
        splits = splits[splits["model"] == model]
    if datasets:
        datasets = DatasetNames.from_frame(indexed_datasets(con)).resolve_all(datasets)
        splits = splits[splits["dataset"].isin(datasets)]
    if splits.empty:
        raise FeatstoreError(
            f"no complete features of {model or 'any model'} to verify"
            + (f" for {', '.join(datasets)}" if datasets else "")
        )
    return splits


def _split_ref(row: tuple) -> SplitRef:
    """The split a row of `complete_splits` names."""
    return SplitRef(row.model, row.dataset, row.split)


def _split_damage(location: StoreLocation, key: str, split: SplitRef, listed: np.ndarray) -> Damage | None:
    """What is wrong with the split version at `key`: its files, or (when they are intact) its example ids and
    their order against the catalog's `listed`; its root is read once for both."""
    try:
        root = read_sealed_root(location, key, split)
    except DamagedSplit as err:
        return Damage(split, [err.problem], None)
    damage = verify_split(location, key, split, root)
    if damage is None and (problem := _order_problem(open_split_store(location, key, split, root), key, listed)):
        damage = Damage(split, [problem], None)
    return damage


def _order_problem(store: IntegrityStore, key: str, listed: np.ndarray) -> str | None:
    """Whether an intact split version's example ids, in row order, differ from the catalog's for that split."""
    stored = zarr.open_array(store, path="example_id", mode="r")[:]
    if not np.array_equal(stored, listed):
        return f"{key} holds {len(stored)} examples whose ids and order differ from the catalog's {len(listed)}"
    return None


def _build_options(settings: dict) -> str:
    """The `featstore build` options that reproduce these recorded settings."""
    options = [
        f"--max-len {settings['max_len']}" if settings.get("max_len") else "",
        f"--limit {settings['limit']}" if settings.get("limit") else "",
        f"--dtype {settings['dtype']}" if settings.get("dtype", "float32") != "float32" else "",
    ]
    return "".join(f" {option}" for option in options if option)
