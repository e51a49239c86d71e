"""The catalog's probe tables: each fit's result row, its test-split scores and its per-head weights.

They are written in one transaction and dropped together, so scores and weights always belong to a
result that is in `probe_results`, and that result to the features in the store now.
"""

from __future__ import annotations

import duckdb
import pandas as pd

KEYED_BY_RESULT = ("probe_scores", "probe_head_weights")


def drop_probe_results(con: duckdb.DuckDBPyConnection, dataset: str, model: str | None = None) -> None:
    """Delete a dataset's probe results (of one model, or of every model) with their scores and weights."""
    condition, params = ("dataset = ?", [dataset]) if model is None else ("dataset = ? AND model = ?", [dataset, model])
    for table in KEYED_BY_RESULT:
        con.execute(f"DELETE FROM {table} WHERE result_id IN (SELECT result_id FROM probe_results WHERE {condition})",
                    params)
    con.execute(f"DELETE FROM probe_results WHERE {condition}", params)


def replace_probe_results(
    con: duckdb.DuckDBPyConnection, rows: pd.DataFrame, scores: pd.DataFrame, head_weights: pd.DataFrame,
    refitted: list[str],
) -> None:
    """Insert result rows and their test scores, replacing earlier rows of the same result_id; head weights
    are replaced for the `refitted` results only (a re-scored probe keeps its weights). One transaction."""
    con.execute("BEGIN TRANSACTION")
    for name, frame in (("new_results", rows), ("new_scores", scores), ("new_weights", head_weights),
                        ("refitted", pd.DataFrame({"result_id": pd.Series(refitted, dtype=str)}))):
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
