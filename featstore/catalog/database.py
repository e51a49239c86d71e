"""The DuckDB catalog `store/catalog.duckdb`: its schema and every connection to it (the single writer's, the
read-only readers', user queries' through `safe_sql`), opened one way: behind the gate, retried while another
process holds DuckDB's file lock.

Columns added after a catalog was first written come through `ADD COLUMN IF NOT EXISTS`, so any
write command brings an older catalog up to date (its older rows hold NULL there). The schema runs only when the
catalog's `featstore_schema` row names another version of it: run every time, its view replacement made every
writer connection a write and a checkpoint (0.44 s a connection on one GPU machine's disk).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import takewhile
from pathlib import Path

import duckdb

from featstore.digests import json_digest
from featstore.errors import FeatstoreError
from featstore.project import Project
from featstore.store.locking import catalog_gate

# Readers hold the catalog for at most a user query's 30 s (safe_sql.USER_QUERY_BUDGET) once a writer waits at the
# gate; a writer waits for them with room to spare.
WRITER_WAIT_S = 120.0
_WRITER_THREAD = threading.RLock()  # one writing thread at a time in this process (the gate orders processes)
BUSY_READING = "the catalog is being written by another featstore process; try again when it finishes"
DAMAGE_SIGNS = ("Corrupt database file", "not a valid DuckDB database file")
FILE_FAILURES = (duckdb.IOException, duckdb.TransactionException, duckdb.FatalException)  # the file, not the query
# Every read-only connection, featstore's own and user queries' alike (DuckDB refuses two configurations of one
# file in a process): locked down for user SQL (see `safe_sql`).
READ_ONLY_CONFIG: dict[str, str | int | bool] = {
    "enable_external_access": False,  # no files, URLs, ATTACH, COPY, INSTALL, Python objects
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "python_enable_replacements": False,  # `FROM name` never reads a caller's DataFrame
    "python_scan_all_frames": False,
    "memory_limit": "2GB",
    "threads": 2,
    "temp_directory": "",  # no spilling to files next to the catalog
    "lock_configuration": True,  # applied last: nothing above can be SET back
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    name VARCHAR PRIMARY KEY,
    number INTEGER NOT NULL,
    tag VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    probe_from VARCHAR,
    probe_to VARCHAR,
    probe_from_extraction VARCHAR,
    probe_to_extraction VARCHAR,
    data_type VARCHAR NOT NULL,
    n_examples INTEGER NOT NULL,
    n_pos INTEGER NOT NULL,
    n_neg INTEGER NOT NULL,
    n_train INTEGER NOT NULL,
    n_test INTEGER NOT NULL,
    split_params JSON NOT NULL,
    fingerprint VARCHAR NOT NULL,
    indexed_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS examples (
    example_id BIGINT PRIMARY KEY,
    dataset VARCHAR NOT NULL,
    "row" INTEGER NOT NULL,
    split VARCHAR NOT NULL,
    label TINYINT NOT NULL,
    prompt VARCHAR NOT NULL,
    n_chars INTEGER NOT NULL,
    prompt_hash VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS features (
    model VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    example_id BIGINT NOT NULL,
    array_row INTEGER NOT NULL,
    seq_len INTEGER NOT NULL,
    n_tokens_source INTEGER NOT NULL,
    truncated BOOLEAN NOT NULL,
    PRIMARY KEY (model, dataset, split, example_id)
);
CREATE TABLE IF NOT EXISTS feature_splits (
    model VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    n_examples INTEGER NOT NULL,
    max_seq_len INTEGER NOT NULL,
    n_layers INTEGER NOT NULL,
    n_heads INTEGER NOT NULL,
    path VARCHAR NOT NULL,
    settings JSON NOT NULL,
    built_at TIMESTAMP NOT NULL,
    build_seconds DOUBLE,
    PRIMARY KEY (model, dataset, split)
);
CREATE TABLE IF NOT EXISTS probe_results (
    result_id VARCHAR PRIMARY KEY,
    dataset VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    feature VARCHAR NOT NULL,
    layers VARCHAR NOT NULL,
    heads VARCHAR NOT NULL,
    aggregation VARCHAR NOT NULL,
    probe VARCHAR NOT NULL,
    baseline BOOLEAN NOT NULL,
    hyperparameters JSON NOT NULL,
    roc_auc DOUBLE NOT NULL,
    roc_auc_ci_low DOUBLE,
    roc_auc_ci_high DOUBLE,
    accuracy DOUBLE NOT NULL,
    balanced_accuracy DOUBLE NOT NULL,
    f1 DOUBLE NOT NULL,
    n_train INTEGER NOT NULL,
    n_test INTEGER NOT NULL,
    n_features INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    fit_seconds DOUBLE NOT NULL,
    featstore_version VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    probe_path VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS probe_scores (
    result_id VARCHAR NOT NULL,
    example_id BIGINT NOT NULL,
    score DOUBLE NOT NULL,
    PRIMARY KEY (result_id, example_id)
);
CREATE TABLE IF NOT EXISTS probe_head_weights (
    result_id VARCHAR NOT NULL,
    layer INTEGER NOT NULL,
    head INTEGER NOT NULL,
    weight DOUBLE NOT NULL,
    PRIMARY KEY (result_id, layer, head)
);
ALTER TABLE feature_splits ADD COLUMN IF NOT EXISTS build_seconds DOUBLE;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS roc_auc_ci_low DOUBLE;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS roc_auc_ci_high DOUBLE;
ALTER TABLE probe_results ADD COLUMN IF NOT EXISTS control VARCHAR DEFAULT '';
CREATE OR REPLACE VIEW baselines AS
    SELECT model, dataset, CAST(layers AS INTEGER) AS layer, avg(roc_auc) AS roc_auc FROM probe_results
    WHERE baseline AND control = '' GROUP BY ALL;
"""
SCHEMA_VERSION = json_digest(SCHEMA, 16)

EXAMPLE_ID_STRIDE = 1_000_000_000


def example_id(number: int, row: int) -> int:
    """A stable id: the dataset number and the row in its source file, so re-imports keep ids."""
    return number * EXAMPLE_ID_STRIDE + row


def one_line(err: Exception) -> str:
    """DuckDB's message without the `LINE n: ...` excerpt and its caret, joined onto one line."""
    lines = takewhile(lambda line: not line.startswith("LINE "), str(err).splitlines())
    return " ".join(line.strip() for line in lines if line.strip())


def damaged_catalog(err: BaseException) -> FeatstoreError | None:
    """DuckDB's failure on a damaged catalog file (flipped bytes, a truncated copy) as one line naming the
    recovery, or None for any other failure."""
    text = " ".join(str(err).split())
    if not isinstance(err, duckdb.Error) or not any(sign in text for sign in DAMAGE_SIGNS):
        return None
    return FeatstoreError(
        f"the catalog store/catalog.duckdb is damaged ({text[:160]}); a clone of a shared store: "
        "delete it and store/.mirror.json and run the command again (or `featstore clone` afresh); "
        "otherwise delete it and run `featstore datasets clean` (or `import-sae-probes`) and the "
        "builds again"
    )


def _file_failure(project: Project, doing: str, err: duckdb.Error) -> FeatstoreError:
    """DuckDB's failure on the catalog file while in use, on one line (a damaged file names its recovery)."""
    reason = " ".join(str(err).split())
    return damaged_catalog(err) or FeatstoreError(f"cannot {doing} {project.catalog_path}: {reason}")


def _busy_writing(catalog_path: Path) -> str:
    return f"{catalog_path} is open in another featstore process; try again when it finishes"


def _connect_retrying(
    catalog_path: Path, connect: Callable[[float], duckdb.DuckDBPyConnection], busy: str, deadline: float
) -> duckdb.DuckDBPyConnection:
    """`connect(seconds_left)`, tried again while another process holds DuckDB's lock on the file until the
    monotonic `deadline`, then `busy`; any other failure to open is one line (a damaged file says so)."""
    while True:
        try:
            return connect(max(0.0, deadline - time.monotonic()))
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise damaged_catalog(err) or FeatstoreError(f"cannot open {catalog_path}: {one_line(err)}") from None
            if time.monotonic() > deadline:
                raise FeatstoreError(busy) from None
            time.sleep(0.05)


def open_read_only(catalog_path: Path, wait_s: float) -> duckdb.DuckDBPyConnection:
    """A read-only connection (locked down, `READ_ONLY_CONFIG`), opened behind the gate so a waiting writer goes
    first, waiting up to `wait_s` for writers."""
    catalog_path = Path(catalog_path)
    if not catalog_path.is_file():
        raise FeatstoreError(
            f"no catalog at {catalog_path}; run `featstore datasets import-sae-probes` or "
            "`featstore datasets clean` first"
        )

    def connect(seconds_left: float) -> duckdb.DuckDBPyConnection:
        with catalog_gate(catalog_path, exclusive=False, wait_s=seconds_left) as passed:
            if not passed:
                raise FeatstoreError(BUSY_READING)
            return duckdb.connect(str(catalog_path), read_only=True, config=READ_ONLY_CONFIG)

    return _connect_retrying(catalog_path, connect, BUSY_READING, time.monotonic() + wait_s)


def upgrade_catalog(project: Project) -> None:
    """Bring an existing catalog's schema up to date (a no-op when it is current; nothing is created)."""
    if project.catalog_path.is_file():
        with catalog_writer(project):
            pass


@contextmanager
def catalog_writer(project: Project, wait_s: float = WRITER_WAIT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """The one read-write connection, waiting up to `wait_s` for other writers and the readers already connected
    to finish (new readers wait behind it, see `catalog_gate`), then a clear error."""
    project.store_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    busy = _busy_writing(project.catalog_path)
    with _WRITER_THREAD, catalog_gate(project.catalog_path, exclusive=True, wait_s=wait_s) as passed:
        if not passed:
            raise FeatstoreError(busy)
        con = _connect_retrying(
            project.catalog_path, lambda _: duckdb.connect(str(project.catalog_path)), busy, deadline
        )
        try:
            _bring_up_to_date(con)
            yield con
        except FILE_FAILURES as err:  # a full disk failing the commit, a truncated or damaged file
            raise _file_failure(project, "read or write", err) from None
        finally:
            con.close()


@contextmanager
def catalog_reader(
    project: Project, wait_s: float = WRITER_WAIT_S, shared: duckdb.DuckDBPyConnection | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection for featstore's own reads of the catalog (user SQL goes through `safe_sql`), opened
    behind the gate so a waiting writer goes first, and closed when the block ends; `shared`: the connection a
    batch of reads already holds, used instead."""
    con = shared if shared is not None else open_read_only(project.catalog_path, wait_s)
    try:
        yield con
    except FILE_FAILURES as err:  # a truncated or damaged file
        raise _file_failure(project, "read", err) from None
    finally:
        if shared is None:
            con.close()


def snapshot_catalog(project: Project, target: Path) -> None:
    """Copy a consistent catalog to `target`: checkpointed and copied while no writer holds it."""
    with catalog_writer(project) as con:
        con.execute("CHECKPOINT")
        shutil.copyfile(project.catalog_path, target)


def replace_catalog(project: Project, downloaded: Path) -> None:
    """Put a downloaded catalog file in place of this project's (its write-ahead log dropped), once no other
    process has it open."""
    with catalog_gate(project.catalog_path, exclusive=True, wait_s=WRITER_WAIT_S) as passed:
        if not passed:
            raise FeatstoreError(_busy_writing(project.catalog_path))
        Path(f"{project.catalog_path}.wal").unlink(missing_ok=True)
        os.replace(downloaded, project.catalog_path)


def _bring_up_to_date(con: duckdb.DuckDBPyConnection) -> None:
    """Run `SCHEMA` unless the catalog records that it already has this version of it (then nothing is written)."""
    recorded = con.execute(
        "SELECT 1 FROM duckdb_tables() WHERE table_name = 'featstore_schema' AND database_name = current_database()"
    ).fetchone()
    if recorded is not None and con.execute("SELECT version FROM featstore_schema").fetchall() == [(SCHEMA_VERSION,)]:
        return
    con.execute(SCHEMA)
    con.execute("CREATE OR REPLACE TABLE featstore_schema AS SELECT ? AS version", [SCHEMA_VERSION])
