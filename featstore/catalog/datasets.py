"""The catalog's dataset tables: `datasets` (one row per cleaned dataset) and `examples` (its rows and splits).

Callers pass the connection (`catalog_writer` or `catalog_reader` of `featstore.catalog.database`); each
operation that writes several statements runs them in one transaction.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import duckdb
import pandas as pd

from featstore.catalog.features import forget_dataset_features, splits_of_dataset
from featstore.catalog.probe_records import drop_probe_results, results_of_dataset


@dataclass(frozen=True)
class DatasetRecord:
    """A `datasets` row, its fields in the table's column order (`indexed_at` is the time it is written)."""

    name: str
    number: int
    tag: str
    source: str
    probe_from: str
    probe_to: str
    probe_from_extraction: str
    probe_to_extraction: str
    data_type: str
    n_examples: int
    n_pos: int
    n_neg: int
    n_train: int
    n_test: int
    split_params: str  # JSON
    fingerprint: str


def indexed_datasets(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every dataset's name, number, tag, input fingerprint and split parameters (JSON), by number."""
    return con.execute("SELECT name, number, tag, fingerprint, split_params FROM datasets ORDER BY number").df()


def indexed_fingerprints(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The input fingerprint of every indexed dataset, by name."""
    return dict(con.execute("SELECT name, fingerprint FROM datasets").fetchall())


def indexed_examples(con: duckdb.DuckDBPyConnection, dataset: str) -> pd.DataFrame:
    """A dataset's examples as indexed: example_id, split, label and prompt."""
    return con.execute("SELECT example_id, split, label, prompt FROM examples WHERE dataset = ?", [dataset]).df()


def split_examples(con: duckdb.DuckDBPyConnection, dataset: str, split: str) -> pd.DataFrame:
    """The example_id, row, label and prompt of a dataset's split, by example_id."""
    return con.execute(
        'SELECT example_id, "row", label, prompt FROM examples WHERE dataset = ? AND split = ? ORDER BY example_id',
        [dataset, split],
    ).df()


def replace_datasets(
    con: duckdb.DuckDBPyConnection, indexed: list[tuple[DatasetRecord, pd.DataFrame]], dropped: set[str]
) -> None:
    """Replace each dataset's row and examples (rows with the `examples` columns, in order), in one transaction;
    the features and probe results of the datasets in `dropped` go too."""
    con.execute("BEGIN TRANSACTION")
    for record, examples in indexed:
        if record.name in dropped:
            drop_probe_results(con, record.name)
            forget_dataset_features(con, record.name)
        con.execute("DELETE FROM examples WHERE dataset = ?", [record.name])
        con.execute("DELETE FROM datasets WHERE name = ?", [record.name])
        con.register("staged_examples", examples)
        con.execute("INSERT INTO examples SELECT * FROM staged_examples")
        con.unregister("staged_examples")
        con.execute(
            "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now())", list(astuple(record))
        )
    con.execute("COMMIT")


def built_work(con: duckdb.DuckDBPyConnection, dataset: str) -> tuple[list[tuple[str, str]], list[tuple]]:
    """What is built from a dataset's examples: its feature splits as (model, split), and its probe results as
    (result_id, model, probe, feature, layers, aggregation), each sorted."""
    return splits_of_dataset(con, dataset), results_of_dataset(con, dataset)


def results_query(dataset: str) -> str:
    """The `featstore sql` query that lists a dataset's probe results (for a message that names only some)."""
    return f"SELECT * FROM probe_results WHERE dataset = '{dataset}'"


def dataset_listing(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """`featstore datasets list`: each dataset's size, class balance, prompt lengths in characters and the models
    whose features are built (with the one split built, when only one is)."""
    return con.execute(
        """WITH per_model AS (
               SELECT dataset, model || CASE WHEN count(*) = 2 THEN '' ELSE ' (' || any_value(split) || ')' END AS built
               FROM feature_splits WHERE status = 'complete' GROUP BY dataset, model),
           built AS (SELECT dataset, string_agg(built, ', ' ORDER BY built) AS built FROM per_model GROUP BY dataset)
           SELECT d.name AS dataset, d.n_examples AS n, d.n_train, d.n_test,
                  round(d.n_pos / d.n_examples, 3) AS pos_fraction,
                  min(e.n_chars) AS chars_min, CAST(median(e.n_chars) AS INTEGER) AS chars_median,
                  max(e.n_chars) AS chars_max, coalesce(any_value(b.built), '') AS built
           FROM datasets d JOIN examples e ON e.dataset = d.name LEFT JOIN built b ON b.dataset = d.name
           GROUP BY d.name, d.n_examples, d.n_train, d.n_test, d.n_pos ORDER BY any_value(d.number)"""
    ).df()


def label_provenance(con: duckdb.DuckDBPyConnection, dataset: str) -> dict | None:
    """What made a dataset's labels, as the catalog indexed its registry row: tag, source file, target column and
    its extraction ('' where an older catalog lacks them) and each class's count; None if not indexed."""
    rows = con.execute(
        "SELECT tag, source, coalesce(probe_to, '') AS target_column, coalesce(probe_to_extraction, '') "
        "AS extraction, n_pos AS n_positive, n_neg AS n_negative FROM datasets WHERE name = ?",
        [dataset],
    ).df()
    if rows.empty:
        return None
    return {key: value if isinstance(value, str) else int(value) for key, value in rows.iloc[0].items()}


def example_prompts(con: duckdb.DuckDBPyConnection, example_ids: list[int]) -> pd.DataFrame:
    """The prompts (example_id, prompt) of these examples."""
    return con.execute("SELECT example_id, prompt FROM examples WHERE list_contains(?, example_id)", [example_ids]).df()
