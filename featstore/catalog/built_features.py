"""Reads of the built features' rows (`feature_splits`, `features` with their examples' labels) that probe runs and
the report need: which splits are complete, their depth, their classes, lengths and sizes."""

from __future__ import annotations

import duckdb
import pandas as pd


def complete_layer_counts(con: duckdb.DuckDBPyConnection, model: str) -> dict[str, int]:
    """The datasets with complete features of `model` (in name order), each with its number of layers."""
    rows = con.execute("SELECT dataset, max(n_layers) FROM feature_splits WHERE model = ? AND status = 'complete' "
                       "GROUP BY dataset ORDER BY dataset", [model]).fetchall()
    return {dataset: int(n_layers) for dataset, n_layers in rows}


def split_class_counts(con: duckdb.DuckDBPyConnection, model: str, dataset: str) -> pd.Series:
    """The number of distinct labels in each complete split of a dataset's features under `model`, by split."""
    return con.execute(
        "SELECT s.split, count(DISTINCT e.label) AS classes FROM feature_splits s "
        "JOIN features f USING (model, dataset, split) JOIN examples e USING (example_id) "
        "WHERE s.model = ? AND s.dataset = ? AND s.status = 'complete' GROUP BY s.split",
        [model, dataset],
    ).df().set_index("split")["classes"]


def complete_split_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per (model, dataset) with complete features, how many splits are complete; by model and dataset."""
    return con.execute("SELECT model, dataset, count(*) AS splits FROM feature_splits WHERE status = 'complete' "
                       "GROUP BY ALL ORDER BY model, dataset").df()


def model_splits(con: duckdb.DuckDBPyConnection, model: str, datasets: list[str]) -> pd.DataFrame:
    """The shape of each complete split of a model's features on these datasets, by dataset and split."""
    return con.execute("SELECT dataset, split, n_examples, max_seq_len, n_layers, n_heads FROM feature_splits "
                       "WHERE model = $model AND status = 'complete' AND list_contains($datasets, dataset) "
                       "ORDER BY dataset, split", {"model": model, "datasets": datasets}).df()


def model_examples(con: duckdb.DuckDBPyConnection, model: str, datasets: list[str]) -> pd.DataFrame:
    """Every example with features of a model on these datasets: dataset, split, example_id, seq_len, truncated,
    label."""
    return con.execute("SELECT f.dataset, f.split, f.example_id, f.seq_len, f.truncated, e.label FROM features f "
                       "JOIN examples e USING (example_id, dataset, split) "
                       "WHERE f.model = $model AND list_contains($datasets, f.dataset)",
                       {"model": model, "datasets": datasets}).df()


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
