"""The catalog's feature tables: `feature_splits` (a built split of one model: status, shape, store version,
settings) and `features` (each built example's row in the split's arrays).

Callers pass the connection (`catalog_writer` or `catalog_reader` of `featstore.catalog.database`); each
operation that writes several statements runs them in one transaction.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import duckdb
import numpy as np
import pandas as pd

from featstore.catalog.probe_records import drop_probe_results
from featstore.store.integrity import SplitRef
from featstore.store.layout import SplitShape


class RecordedSplit(NamedTuple):
    """A split's `feature_splits` row as a build reads it: status, settings (JSON) and the store key of its version."""

    status: str
    settings: str
    path: str


def recorded_splits(con: duckdb.DuckDBPyConnection, model: str) -> dict[tuple[str, str], RecordedSplit]:
    """Every split recorded for a model key, complete or not, by (dataset, split)."""
    found = con.execute("SELECT dataset, split, status, settings, path FROM feature_splits WHERE model = ?", [model])
    return {
        (dataset, split): RecordedSplit(status, settings, path)
        for dataset, split, status, settings, path in found.fetchall()
    }


def recorded_path(con: duckdb.DuckDBPyConnection, split: SplitRef) -> str:
    """The store key of the version the catalog points to for a split."""
    return con.execute(
        "SELECT path FROM feature_splits WHERE model = ? AND dataset = ? AND split = ?",
        [split.model, split.dataset, split.split],
    ).fetchone()[0]


def record_status(
    con: duckdb.DuckDBPyConnection,
    split: SplitRef,
    status: str,
    shape: SplitShape,
    path: str,
    settings: dict,
    build_seconds: float | None = None,
) -> None:
    """Write a split's `feature_splits` row (replacing the one recorded before), built at the current time."""
    key = [split.model, split.dataset, split.split]
    con.execute("DELETE FROM feature_splits WHERE model = ? AND dataset = ? AND split = ?", key)
    con.execute(
        "INSERT INTO feature_splits (model, dataset, split, status, n_examples, max_seq_len, n_layers, n_heads, path, "
        "settings, built_at, build_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?)",
        [
            *key,
            status,
            shape.n_examples,
            shape.max_seq_len,
            shape.n_layers,
            shape.n_heads,
            path,
            json.dumps(settings),
            build_seconds,
        ],
    )


def register_split(
    con: duckdb.DuckDBPyConnection,
    split: SplitRef,
    rows: pd.DataFrame,
    shape: SplitShape,
    path: str,
    settings: dict,
    build_seconds: float,
) -> None:
    """Record a built split's rows (the `features` columns, in order) and mark it complete at its published
    version `path`, dropping the probe results of the dataset fitted on the model's earlier features; one
    transaction."""
    con.execute("BEGIN TRANSACTION")
    con.execute(
        "DELETE FROM features WHERE model = ? AND dataset = ? AND split = ?", [split.model, split.dataset, split.split]
    )
    drop_probe_results(con, split.dataset, split.model)
    con.register("built_rows", rows)
    con.execute("INSERT INTO features SELECT * FROM built_rows")
    con.unregister("built_rows")
    record_status(con, split, "complete", shape, path, settings, build_seconds)
    con.execute("COMMIT")


def repoint_split(con: duckdb.DuckDBPyConnection, split: SplitRef, path: str) -> None:
    """Point a complete split to another version of it (a repaired one); its rows and probe results stay."""
    con.execute(
        "UPDATE feature_splits SET path = ? WHERE model = ? AND dataset = ? AND split = ?",
        [path, split.model, split.dataset, split.split],
    )


def forget_dataset_features(con: duckdb.DuckDBPyConnection, dataset: str) -> None:
    """Delete the rows and split records of a dataset's features, of every model."""
    for table in ("features", "feature_splits"):
        con.execute(f"DELETE FROM {table} WHERE dataset = ?", [dataset])


def splits_of_dataset(con: duckdb.DuckDBPyConnection, dataset: str) -> list[tuple[str, str]]:
    """The (model, split) of every split recorded for a dataset, complete or not, sorted."""
    found = con.execute("SELECT model, split FROM feature_splits WHERE dataset = ? ORDER BY model, split", [dataset])
    return [tuple(row) for row in found.fetchall()]


def complete_splits(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The model, dataset, split, store key (`path`) and settings (JSON) of every complete split, sorted."""
    return con.execute(
        "SELECT model, dataset, split, path, settings FROM feature_splits WHERE status = 'complete' ORDER BY ALL"
    ).df()


def complete_models(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The models with complete features of at least one split, sorted."""
    found = con.execute("SELECT DISTINCT model FROM feature_splits WHERE status = 'complete' ORDER BY model")
    return [model for (model,) in found.fetchall()]


def dataset_splits(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every dataset (name, number, tag) with each complete split of it (model, split, path; NULL when none is
    built), by dataset number and model."""
    return con.execute(
        "SELECT d.name, d.number, d.tag, s.model, s.split, s.path FROM datasets d LEFT JOIN feature_splits s "
        "ON s.dataset = d.name AND s.status = 'complete' ORDER BY d.number, s.model"
    ).df()


def example_order(con: duckdb.DuckDBPyConnection, split: SplitRef) -> np.ndarray:
    """A built split's example ids in the order of its array rows."""
    return (
        con.execute(
            "SELECT example_id FROM features WHERE model = ? AND dataset = ? AND split = ? ORDER BY array_row",
            [split.model, split.dataset, split.split],
        )
        .df()["example_id"]
        .to_numpy()
    )


def split_labels(con: duckdb.DuckDBPyConnection, split: SplitRef) -> pd.Series:
    """The label of each example of a built split, by example_id."""
    return (
        con.execute(
            "SELECT f.example_id, e.label FROM features f JOIN examples e USING (example_id, dataset, split) "
            "WHERE f.model = ? AND f.dataset = ? AND f.split = ?",
            [split.model, split.dataset, split.split],
        )
        .df()
        .set_index("example_id")["label"]
    )


def complete_layer_counts(con: duckdb.DuckDBPyConnection, model: str) -> dict[str, int]:
    """The datasets with complete features of `model` (in name order), each with its number of layers."""
    rows = con.execute(
        "SELECT dataset, max(n_layers) FROM feature_splits WHERE model = ? AND status = 'complete' "
        "GROUP BY dataset ORDER BY dataset",
        [model],
    ).fetchall()
    return {dataset: int(n_layers) for dataset, n_layers in rows}


def split_class_counts(con: duckdb.DuckDBPyConnection, model: str, dataset: str) -> pd.Series:
    """The number of distinct labels in each complete split of a dataset's features under `model`, by split."""
    return (
        con.execute(
            "SELECT s.split, count(DISTINCT e.label) AS classes FROM feature_splits s "
            "JOIN features f USING (model, dataset, split) JOIN examples e USING (example_id) "
            "WHERE s.model = ? AND s.dataset = ? AND s.status = 'complete' GROUP BY s.split",
            [model, dataset],
        )
        .df()
        .set_index("split")["classes"]
    )


def complete_split_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per (model, dataset) with complete features, how many splits are complete; by model and dataset."""
    return con.execute(
        "SELECT model, dataset, count(*) AS splits FROM feature_splits WHERE status = 'complete' "
        "GROUP BY ALL ORDER BY model, dataset"
    ).df()


def model_splits(con: duckdb.DuckDBPyConnection, model: str, datasets: list[str]) -> pd.DataFrame:
    """The shape of each complete split of a model's features on these datasets, by dataset and split."""
    return con.execute(
        "SELECT dataset, split, n_examples, max_seq_len, n_layers, n_heads FROM feature_splits "
        "WHERE model = $model AND status = 'complete' AND list_contains($datasets, dataset) "
        "ORDER BY dataset, split",
        {"model": model, "datasets": datasets},
    ).df()


def model_examples(con: duckdb.DuckDBPyConnection, model: str, datasets: list[str]) -> pd.DataFrame:
    """Every example with features of a model on these datasets: dataset, split, example_id, seq_len, truncated,
    label."""
    return con.execute(
        "SELECT f.dataset, f.split, f.example_id, f.seq_len, f.truncated, e.label FROM features f "
        "JOIN examples e USING (example_id, dataset, split) "
        "WHERE f.model = $model AND list_contains($datasets, f.dataset)",
        {"model": model, "datasets": datasets},
    ).df()


def split_summaries(con: duckdb.DuckDBPyConnection, model: str, datasets: list[str]) -> pd.DataFrame:
    """Each complete split of a model's features on these datasets with its stored path, settings and build time,
    its token count and its number of truncated prompts."""
    return con.execute(
        "SELECT s.dataset, s.split, s.n_examples, s.max_seq_len, s.path, s.settings, s.built_at, s.build_seconds, "
        "sum(f.seq_len) AS tokens, count_if(f.truncated) AS truncated FROM feature_splits s JOIN features f "
        "USING (model, dataset, split) WHERE s.model = $model AND s.status = 'complete' "
        "AND list_contains($datasets, s.dataset) GROUP BY ALL ORDER BY ALL",
        {"model": model, "datasets": datasets},
    ).df()
