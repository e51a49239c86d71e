"""User SQL on the catalog: right frames for SELECTs, one-line refusals for everything else, catalog untouched."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from featstore.catalog.safe_sql import QueryRefused, open_locked_down, run_user_query
from featstore.errors import FeatstoreError

secret = pd.DataFrame({"password": ["module-level hunter2"]})

EXAMPLES = pd.DataFrame(
    {
        "example_id": [1, 2, 3, 4, 5, 6],
        "dataset": ["a", "a", "a", "b", "b", "b"],
        "split": ["train", "train", "test", "train", "test", "test"],
        "label": [0, 1, 1, 0, 0, 1],
        "prompt": ["p1", "p2", "p3", "p4", "p5", "p6"],
    }
)
DATASETS = pd.DataFrame({"name": ["a", "b"], "tag": ["tag_a", "tag_b"], "n_examples": [3, 3]})


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE examples(example_id BIGINT, dataset VARCHAR, split VARCHAR, label INT, prompt VARCHAR)")
    con.execute("CREATE TABLE datasets(name VARCHAR, tag VARCHAR, n_examples INT)")
    con.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?)", EXAMPLES.values.tolist())
    con.executemany("INSERT INTO datasets VALUES (?, ?, ?)", DATASETS.values.tolist())
    con.close()
    return path


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under the directory with its sha256: catches edits, WAL files and written outputs."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.rglob("*")
        if p.is_file()
    }


def assert_values_equal(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)


TRAIN = EXAMPLES[EXAMPLES.split == "train"]
JOINED = EXAMPLES.merge(DATASETS, left_on="dataset", right_on="name")
PER_DATASET = EXAMPLES.groupby("dataset", as_index=False).agg(n=("label", "size"), n_pos=("label", "sum"))

ACCEPTED = [
    ("SELECT * FROM examples ORDER BY example_id", None, EXAMPLES),
    (
        "WITH tr AS (SELECT * FROM examples WHERE split = 'train') SELECT example_id FROM tr ORDER BY 1",
        None,
        TRAIN[["example_id"]],
    ),
    (
        "SELECT e.example_id, d.tag FROM examples e JOIN datasets d ON e.dataset = d.name ORDER BY 1",
        None,
        JOINED[["example_id", "tag"]],
    ),
    (
        "SELECT dataset, count(*) AS n, sum(label) AS n_pos FROM examples GROUP BY dataset ORDER BY dataset",
        None,
        PER_DATASET,
    ),
    (
        "SELECT example_id FROM examples WHERE label = ? AND split = ? ORDER BY 1",
        [1, "test"],
        EXAMPLES.query("label == 1 and split == 'test'")[["example_id"]],
    ),
    (
        "SELECT example_id FROM examples WHERE dataset = $ds ORDER BY 1",
        {"ds": "b"},
        EXAMPLES.query("dataset == 'b'")[["example_id"]],
    ),
    ("FROM examples SELECT example_id WHERE split = 'train' ORDER BY example_id", None, TRAIN[["example_id"]]),
    ("VALUES (1, 'x'), (2, 'y')", None, pd.DataFrame({"col0": [1, 2], "col1": ["x", "y"]})),
    (
        "SELECT value FROM duckdb_settings() WHERE name = 'enable_external_access'",
        None,
        pd.DataFrame({"value": ["false"]}),
    ),
    ("SELECT column_name FROM (DESCRIBE examples)", None, pd.DataFrame({"column_name": list(EXAMPLES.columns)})),
]


@pytest.mark.parametrize(("query", "params", "expected"), ACCEPTED)
def test_accepted_select_returns_the_plain_reference(catalog: Path, query: str, params, expected: pd.DataFrame) -> None:
    before = snapshot(catalog.parent)
    assert_values_equal(run_user_query(catalog, query, params), expected)
    assert snapshot(catalog.parent) == before


# Refused by the statement check before anything runs: (query, what the one-line message must name).
REFUSED_STATEMENTS = [
    ("CREATE TABLE t(a INT)", "CREATE statements are not allowed"),
    ("CREATE TEMP TABLE t AS SELECT 1", "CREATE statements are not allowed"),
    ("DROP TABLE examples", "DROP statements are not allowed"),
    ("ALTER TABLE examples ADD COLUMN x INT", "ALTER statements are not allowed"),
    ("INSERT INTO examples SELECT * FROM examples", "INSERT statements are not allowed"),
    ("UPDATE examples SET label = 1", "UPDATE statements are not allowed"),
    ("DELETE FROM examples", "DELETE statements are not allowed"),
    ("COPY examples TO '{dir}/out.csv'", "COPY statements are not allowed"),
    ("ATTACH '{dir}/other.duckdb' AS other", "ATTACH statements are not allowed"),
    ("DETACH catalog", "DETACH statements are not allowed"),
    ("INSTALL httpfs", "INSTALL/LOAD statements are not allowed"),
    ("LOAD httpfs", "INSTALL/LOAD statements are not allowed"),
    ("SET enable_external_access = true", "SET/RESET/USE statements are not allowed"),
    ("RESET memory_limit", "SET/RESET/USE statements are not allowed"),
    ("PRAGMA table_info('examples')", "PRAGMA statements are not allowed"),
    ("CALL duckdb_settings()", "CALL statements are not allowed"),
    ("EXPORT DATABASE '{dir}/export'", "EXPORT statements are not allowed"),
    ("EXPLAIN ANALYZE SELECT * FROM examples", "EXPLAIN statements are not allowed"),
    ("PIVOT examples ON split USING count(*)", "PIVOT statements are not allowed"),
    ("SELECT 1; DROP TABLE examples", "only one SELECT statement is allowed, got 2 statements"),
    ("SELECT 1; SELECT 2", "only one SELECT statement is allowed, got 2 statements"),
    ("  ; -- nothing", "only one SELECT statement is allowed, got 0 statements"),
]

# Typed SELECT by the parser, stopped by the locked-down connection when run.
REFUSED_AT_RUN_TIME = [
    (
        "SELECT * FROM read_csv_auto('/etc/passwd')",
        'file access is disabled in user queries (Permission Error: Cannot access file "/etc/passwd"',
    ),
    ("SELECT * FROM read_text('/etc/passwd')", "file access is disabled"),
    ("SELECT * FROM read_blob('/etc/passwd')", "file access is disabled"),
    ("SELECT * FROM read_parquet('{dir}/x.parquet')", "file access is disabled"),
    ("SELECT * FROM read_json('/etc/passwd')", "file access is disabled"),
    ("SELECT * FROM glob('/*')", "file access is disabled"),
    ("SELECT * FROM duckdb_secrets()", "file access is disabled"),
    ("SELECT * FROM 'https://example.com/x.csv'", "file access is disabled"),
    ("SELECT * FROM '/etc/passwd'", "Table with name /etc/passwd does not exist"),
    ("SELECT getenv('HOME')", "Scalar Function with name getenv does not exist"),
    ("SELECT set_config('enable_external_access', 'true')", "Scalar Function with name set_config does not exist"),
    ("SELECT * FROM query('DROP TABLE examples')", "Expected a single SELECT statement"),
    ("WITH gone AS (DELETE FROM examples RETURNING *) SELECT * FROM gone", "attached in read-only mode"),
]


@pytest.mark.parametrize(("query", "reason"), REFUSED_STATEMENTS + REFUSED_AT_RUN_TIME)
def test_refused_query_names_the_reason_and_leaves_the_catalog_unchanged(
    catalog: Path, query: str, reason: str
) -> None:
    before = snapshot(catalog.parent)
    with pytest.raises(QueryRefused) as refused:
        run_user_query(catalog, query.format(dir=catalog.parent))
    message = str(refused.value)
    assert reason in message and "\n" not in message
    assert message.startswith(("refused: ", "query failed: "))
    assert snapshot(catalog.parent) == before
    assert_values_equal(run_user_query(catalog, "SELECT * FROM examples ORDER BY example_id"), EXAMPLES)


def test_python_variables_are_not_tables(catalog: Path) -> None:
    secret = pd.DataFrame({"password": ["local hunter2"]})  # noqa: F841 - the query tries to read it by name
    with pytest.raises(QueryRefused, match="Table with name secret does not exist"):
        run_user_query(catalog, "SELECT * FROM secret")
    con = open_locked_down(catalog)  # the connection itself, queried from this frame, past the statement check
    try:
        with pytest.raises(duckdb.CatalogException, match="secret does not exist"):
            con.execute("SELECT * FROM secret")
    finally:
        con.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("enable_external_access", False),
        ("autoinstall_known_extensions", False),
        ("autoload_known_extensions", False),
        ("python_enable_replacements", False),
        ("python_scan_all_frames", False),
        ("lock_configuration", True),
    ],
)
def test_locked_down_settings_hold_and_cannot_be_set_back(catalog: Path, name: str, value: bool) -> None:
    assert run_user_query(catalog, "SELECT current_setting(?) AS v", [name]).v.item() is value
    con = open_locked_down(catalog)
    try:
        with pytest.raises(duckdb.InvalidInputException, match="configuration has been locked"):
            con.execute(f"SET {name} = {str(not value).lower()}")
    finally:
        con.close()


def test_long_query_is_stopped_by_the_time_limit(catalog: Path) -> None:
    # uninterrupted this runs for tens of seconds on 2 cores, so a broken interrupt fails the test
    long_query = "SELECT sum(a.range * b.range) FROM range(100000) a, range(100000) b"
    with pytest.raises(QueryRefused, match=r"^query stopped after 0.2 s time limit$"):
        run_user_query(catalog, long_query, timeout_s=0.2)


@pytest.mark.parametrize("max_rows", [0, 1, 1000, 2048, 3334, 5000])
def test_max_rows_keeps_the_first_rows_in_order(catalog: Path, max_rows: int) -> None:
    # the WHERE makes DuckDB stream chunks of under 2048 rows, so several chunks are read
    got = run_user_query(
        catalog, "SELECT range AS i FROM range(10000) WHERE range % 3 = 0 ORDER BY i DESC", max_rows=max_rows
    )
    expected = np.arange(0, 10000, 3)[::-1][:max_rows]
    assert list(got.columns) == ["i"]
    np.testing.assert_array_equal(got.i.to_numpy(), expected)


def test_max_rows_keeps_the_dtypes_of_the_full_frame(catalog: Path) -> None:
    full = run_user_query(catalog, "SELECT * FROM examples ORDER BY example_id")
    assert_values_equal(
        run_user_query(catalog, "SELECT * FROM examples ORDER BY example_id", max_rows=2), EXAMPLES.head(2)
    )
    assert run_user_query(catalog, "SELECT * FROM examples", max_rows=2).dtypes.equals(full.dtypes)


@pytest.mark.parametrize(
    ("query", "params", "reason"),
    [
        (
            "SELECT nope FROM examples",
            None,
            'query failed: Binder Error: Referenced column "nope" not found in FROM clause!',
        ),
        ("SELEC * FROM examples", None, 'query failed: Parser Error: syntax error at or near "SELEC"'),
        (
            "SELECT * FROM exampls",
            None,
            'query failed: Catalog Error: Table with name exampls does not exist! Did you mean "examples"?',
        ),
        ("SELECT * FROM examples WHERE label = ?", [], "query failed: "),
    ],
)
def test_duckdb_errors_become_one_line_refusals(catalog: Path, query: str, params, reason: str) -> None:
    with pytest.raises(QueryRefused) as refused:
        run_user_query(catalog, query, params)
    assert str(refused.value).startswith(reason) and "\n" not in str(refused.value)


def test_missing_catalog_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(
        FeatstoreError, match=r"^no catalog at .*missing\.duckdb; run `featstore datasets import-sae-probes`"
    ):
        run_user_query(tmp_path / "missing.duckdb", "SELECT 1")
    assert not (tmp_path / "missing.duckdb").exists()


def test_catalog_written_by_another_process_gives_a_clear_message(catalog: Path, monkeypatch) -> None:
    holder = "import duckdb, sys; con = duckdb.connect(sys.argv[1]); print('ready', flush=True); sys.stdin.read()"
    writer = subprocess.Popen(
        [sys.executable, "-c", holder, str(catalog)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    monkeypatch.setattr("featstore.catalog.safe_sql.LOCK_WAIT_S", 0.5)
    try:
        assert writer.stdout.readline().strip() == "ready"
        with pytest.raises(
            FeatstoreError,
            match="^the catalog is being written by another featstore process; try again when it finishes$",
        ):
            run_user_query(catalog, "SELECT 1")
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    assert run_user_query(catalog, "SELECT count(*) AS n FROM examples").n.item() == len(EXAMPLES)


def test_a_reader_waits_for_a_short_write_to_finish(catalog: Path) -> None:
    holder = (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
        "time.sleep(1.5); con.close(); time.sleep(5)"
    )
    writer = subprocess.Popen([sys.executable, "-c", holder, str(catalog)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        assert run_user_query(catalog, "SELECT count(*) AS n FROM examples").n.item() == len(EXAMPLES)
    finally:
        writer.kill()
        writer.wait(timeout=30)


def test_catalog_open_for_writing_in_this_process_gives_a_clear_message(catalog: Path) -> None:
    writer = duckdb.connect(str(catalog))
    try:
        with pytest.raises(FeatstoreError, match="holds another connection to it .*; close that connection first$"):
            run_user_query(catalog, "SELECT 1")
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"timeout_s": 0}, "timeout_s must be a positive"), ({"max_rows": -1}, "max_rows must be 0 or more")],
)
def test_bad_limits_are_refused(catalog: Path, kwargs: dict, reason: str) -> None:
    with pytest.raises(FeatstoreError, match=reason):
        run_user_query(catalog, "SELECT 1", **kwargs)
