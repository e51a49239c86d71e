"""The catalog's probe tables: each fit's result row, its test-split scores and its per-head weights.

They are written in one transaction and dropped together, so scores and weights always belong to a
result that is in `probe_results`, and that result to the features in the store now. Every statement
featstore runs on these tables (and the `baselines` view over them) is a named function here.
"""

from __future__ import annotations

import duckdb
import pandas as pd

KEYED_BY_RESULT = ("probe_scores", "probe_head_weights")
LISTED_COLUMNS = (
    "result_id, dataset, model, probe, feature, layers, aggregation, seed, baseline, control, roc_auc, "
    "roc_auc_ci_low, roc_auc_ci_high, n_test"
)
REPORTED_COLUMNS = (
    "result_id, dataset, probe, feature, layers, aggregation, baseline, roc_auc, roc_auc_ci_low, "
    "roc_auc_ci_high, n_train, n_test, n_features, seed, control"
)


def drop_probe_results(con: duckdb.DuckDBPyConnection, dataset: str, model: str | None = None) -> None:
    """Delete a dataset's probe results (of one model, or of every model) with their scores and weights."""
    condition, params = ("dataset = ?", [dataset]) if model is None else ("dataset = ? AND model = ?", [dataset, model])
    for table in KEYED_BY_RESULT:
        con.execute(
            f"DELETE FROM {table} WHERE result_id IN (SELECT result_id FROM probe_results WHERE {condition})", params
        )
    con.execute(f"DELETE FROM probe_results WHERE {condition}", params)


def replace_probe_results(
    con: duckdb.DuckDBPyConnection,
    rows: pd.DataFrame,
    scores: pd.DataFrame,
    head_weights: pd.DataFrame,
    refitted: list[str],
) -> None:
    """Insert result rows and their test scores, replacing earlier rows of the same result_id; head weights
    are replaced for the `refitted` results only (a re-scored probe keeps its weights). One transaction."""
    con.execute("BEGIN TRANSACTION")
    for name, frame in (
        ("new_results", rows),
        ("new_scores", scores),
        ("new_weights", head_weights),
        ("refitted", pd.DataFrame({"result_id": pd.Series(refitted, dtype=str)})),
    ):
        con.register(name, frame)
    con.execute("DELETE FROM probe_scores WHERE result_id IN (SELECT result_id FROM new_results)")
    con.execute("DELETE FROM probe_head_weights WHERE result_id IN (SELECT result_id FROM refitted)")
    con.execute("DELETE FROM probe_results WHERE result_id IN (SELECT result_id FROM new_results)")
    con.execute("INSERT INTO probe_results BY NAME SELECT * FROM new_results")
    con.execute("INSERT INTO probe_scores BY NAME SELECT * FROM new_scores")
    con.execute("INSERT INTO probe_head_weights BY NAME SELECT * FROM new_weights")
    for name in ("new_results", "new_scores", "new_weights", "refitted"):
        con.unregister(name)
    con.execute("COMMIT")


def all_results(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every row of `probe_results`, all columns."""
    return con.execute("SELECT * FROM probe_results").df()


def listed_results(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The columns `featstore results` shows of every result, by dataset and model."""
    return con.execute(f"SELECT {LISTED_COLUMNS} FROM probe_results ORDER BY dataset, model").df()


def model_results(con: duckdb.DuckDBPyConnection, model: str, datasets: list[str]) -> pd.DataFrame:
    """The columns the report shows of a model's results on these datasets, by dataset and result id."""
    return con.execute(
        f"SELECT {REPORTED_COLUMNS} FROM probe_results WHERE model = $model AND "
        "list_contains($datasets, dataset) ORDER BY dataset, result_id",
        {"model": model, "datasets": datasets},
    ).df()


def count_results(con: duckdb.DuckDBPyConnection, model: str, datasets: list[str]) -> int:
    """How many results a model has on these datasets."""
    return int(
        con.execute(
            "SELECT count(*) FROM probe_results WHERE model = $model AND list_contains($datasets, dataset)",
            {"model": model, "datasets": datasets},
        ).fetchone()[0]
    )


def probe_path(con: duckdb.DuckDBPyConnection, result_id: str) -> str | None:
    """Where a result's fitted probe is saved (store-relative), or None when there is no such result."""
    found = con.execute("SELECT probe_path FROM probe_results WHERE result_id = ?", [result_id]).fetchone()
    return None if found is None else str(found[0])


def baselines(con: duckdb.DuckDBPyConnection, model: str) -> pd.DataFrame:
    """Each dataset's baseline test AUC under a model (the `baselines` view: the mean over its seeds)."""
    return con.execute("SELECT dataset, roc_auc FROM baselines WHERE model = ?", [model]).df()


def model_head_weights(con: duckdb.DuckDBPyConnection, model: str, datasets: list[str]) -> pd.DataFrame:
    """The per-head weights of a model's results on these datasets, by result, layer and head."""
    return con.execute(
        "SELECT w.result_id, w.layer, w.head, w.weight FROM probe_head_weights w JOIN probe_results r "
        "USING (result_id) WHERE r.model = $model AND list_contains($datasets, r.dataset) "
        "ORDER BY w.result_id, w.layer, w.head",
        {"model": model, "datasets": datasets},
    ).df()


def scored_results(con: duckdb.DuckDBPyConnection, result_ids: list[str]) -> set[str]:
    """Which of these results have stored test scores."""
    found = con.execute(
        "SELECT DISTINCT result_id FROM probe_scores WHERE list_contains($ids, result_id)", {"ids": result_ids}
    ).df()
    return set(found["result_id"])


def result_scores(con: duckdb.DuckDBPyConnection, result_ids: list[str]) -> pd.DataFrame:
    """The stored test scores of these results: result_id, example_id, score."""
    return con.execute(
        "SELECT result_id, example_id, score FROM probe_scores WHERE list_contains($ids, result_id)",
        {"ids": result_ids},
    ).df()


def labelled_scores(con: duckdb.DuckDBPyConnection, result_ids: list[str]) -> pd.DataFrame:
    """The stored test scores of these results with each example's label: result_id, example_id, score, label."""
    return con.execute(
        "SELECT s.result_id, s.example_id, s.score, e.label FROM probe_scores s "
        "JOIN examples e USING (example_id) WHERE list_contains($ids, s.result_id)",
        {"ids": result_ids},
    ).df()


def results_of_dataset(con: duckdb.DuckDBPyConnection, dataset: str) -> list[tuple]:
    """A dataset's probe results as (result_id, model, probe, feature, layers, aggregation), sorted."""
    return con.execute(
        "SELECT result_id, model, probe, feature, layers, aggregation FROM probe_results WHERE dataset = ? "
        "ORDER BY model, probe, feature, layers, aggregation",
        [dataset],
    ).fetchall()
