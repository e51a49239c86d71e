"""`featstore verify`: check every complete split the catalog lists, file by file, and say what to rebuild."""

from __future__ import annotations

import json

import numpy as np
import zarr

from featstore.catalog.database import catalog_reader
from featstore.catalog.features import complete_splits, example_order
from featstore.catalog.names import catalog_dataset_names, unknown_model
from featstore.errors import FeatstoreError
from featstore.project import Project
from featstore.store.integrity import Damage, SplitRef, open_split_store, verify_split


def verify_store(
    project: Project, model: str | None = None, datasets: list[str] | None = None
) -> tuple[list[Damage], list[str]]:
    """The damaged splits among the complete ones of `model` and `datasets` (all by default), and the
    `featstore build --repair` commands (with the options the splits were built with) that fix them."""
    if not project.catalog_path.exists():
        raise FeatstoreError("the catalog is empty; nothing is built to verify")
    with catalog_reader(project) as con:
        splits = complete_splits(con)
    if model is not None:
        if model not in set(splits["model"]):
            raise unknown_model(model, sorted(set(splits["model"])))
        splits = splits[splits["model"] == model]
    if datasets:
        datasets = catalog_dataset_names(project).resolve_all(datasets)
        splits = splits[splits["dataset"].isin(datasets)]
    if splits.empty:
        raise FeatstoreError(
            f"no complete features of {model or 'any model'} to verify"
            + (f" for {', '.join(datasets)}" if datasets else "")
        )
    damaged, commands = [], {}
    for row in splits.itertuples():
        split = SplitRef(row.model, row.dataset, row.split)
        damage = verify_split(project.store, row.path, split)
        if damage is None and (problem := _order_problem(project, row.path, split)):
            damage = Damage(split, [problem], None)
        if damage is not None:
            damaged.append(damage)
            command = (
                f"featstore build --repair --model {row.model}{_build_options(json.loads(row.settings))} --datasets"
            )
            commands.setdefault(command, {})[row.dataset] = None
    return damaged, [f"{command} {' '.join(names)}" for command, names in commands.items()]


def _order_problem(project: Project, key: str, split: SplitRef) -> str | None:
    """Whether an intact split version's example ids, in row order, differ from the catalog's for that split."""
    stored = zarr.open_array(open_split_store(project.store, key, split), path="example_id", mode="r")[:]
    with catalog_reader(project) as con:
        listed = example_order(con, split)
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
