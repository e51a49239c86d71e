"""The DuckDB catalog `store/catalog.duckdb`: its schema and the single writer's connection.

Columns added after a catalog was first written come through `ADD COLUMN IF NOT EXISTS`, so any
write command brings an older catalog up to date (its older rows hold NULL there).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb

from featstore.errors import FeatstoreError
from featstore.project import Project
from featstore.catalog.safe_sql import damaged_catalog
from featstore.store.locking import catalog_gate

# Readers hold the catalog for at most a user query's 30 s (safe_sql.USER_QUERY_BUDGET) once a writer waits at the
# gate; a writer waits for them with room to spare.
WRITER_WAIT_S = 120.0
_WRITER_THREAD = threading.RLock()  # one writing thread at a time in this process (the gate orders processes)

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

EXAMPLE_ID_STRIDE = 1_000_000_000


def example_id(number: int, row: int) -> int:
    """A stable id: the dataset number and the row in its source file, so re-imports keep ids."""
    return number * EXAMPLE_ID_STRIDE + row


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
    busy = f"{project.catalog_path} is open in another featstore process; try again when it finishes"
    with _WRITER_THREAD, catalog_gate(project.catalog_path, exclusive=True, wait_s=wait_s) as passed:
        if not passed:
            raise FeatstoreError(busy)
        while True:
            try:
                con = duckdb.connect(str(project.catalog_path))
                break
            except duckdb.IOException as err:
                if "lock" not in str(err).lower():
                    raise damaged_catalog(err) or FeatstoreError(f"cannot open {project.catalog_path}: "
                                                                 f"{str(err).splitlines()[0]}") from None
                if time.monotonic() > deadline:
                    raise FeatstoreError(busy) from None
                time.sleep(0.05)
        try:
            con.execute(SCHEMA)
            yield con
        except (duckdb.IOException, duckdb.TransactionException, duckdb.FatalException) as err:
            # a full disk failing the commit, a truncated or damaged file: DuckDB's reason, on one line
            reason = " ".join(str(err).split())
            raise damaged_catalog(err) or FeatstoreError(f"cannot read or write {project.catalog_path}: {reason}") from None
        finally:
            con.close()


@contextmanager
def catalog_reader(project: Project, wait_s: float = WRITER_WAIT_S) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection for featstore's own reads of the catalog (user SQL goes through `safe_sql`), opened
    behind the gate so a waiting writer goes first, and closed when the block ends."""
    if not project.catalog_path.is_file():
        raise FeatstoreError(f"no catalog at {project.catalog_path}; run `featstore datasets import-sae-probes` or "
                             "`featstore datasets clean` first")
    deadline = time.monotonic() + wait_s
    busy = "the catalog is being written by another featstore process; try again when it finishes"
    while True:
        try:
            with catalog_gate(project.catalog_path, exclusive=False, wait_s=max(0.0, deadline - time.monotonic())) as passed:
                if not passed:
                    raise FeatstoreError(busy)
                con = duckdb.connect(str(project.catalog_path), read_only=True)
            break
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise damaged_catalog(err) or FeatstoreError(f"cannot open {project.catalog_path}: "
                                                             f"{str(err).splitlines()[0]}") from None
            if time.monotonic() > deadline:
                raise FeatstoreError(busy) from None
            time.sleep(0.05)
    try:
        yield con
    finally:
        con.close()
