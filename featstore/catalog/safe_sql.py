"""Run a user's SQL on the catalog: one SELECT, on a locked-down read-only connection, under a time limit.

The connection is the catalog's read-only one (`database.READ_ONLY_CONFIG`). DuckDB calls its settings defence in
depth, not a sandbox: they stop file, network, extension, settings and Python-variable access, and the read-only
connection stops writes.
Accepted: statements DuckDB's parser types as SELECT, which include WITH, FROM-first (`FROM t`),
VALUES, `TABLE t`, UNPIVOT and the read-only DESCRIBE / SHOW / SUMMARIZE. Refused: everything else,
including EXPLAIN (EXPLAIN ANALYZE runs its query), PRAGMA and CALL (use `SELECT * FROM pragma_table_info('t')`
or `FROM duckdb_settings()`), and PIVOT without an IN list (DuckDB runs it as several statements).
DuckDB's own memory limit does not cover everything (list functions allocate outside it) and its
interrupt is not checked inside every operator, so `featstore sql` runs its query in a forked child
under USER_QUERY_BUDGET (`run_bounded_query`), fetching and capping the rows there.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from featstore.bounded import Budget, run_bounded
from featstore.catalog.database import damaged_catalog, one_line, open_read_only
from featstore.errors import FeatstoreError

USER_QUERY_BUDGET = Budget(seconds=30.0, memory_bytes=3 * 2**30)  # DuckDB's 2 GB plus room for the fetched frame
DEFAULT_MAX_ROWS = 100_000
MAX_RESULT_BYTES = 256 * 2**20
LOCK_WAIT_S = 120.0  # how long a reader waits for a writer (a build registering a split) to let go

READABLE_STATEMENT_NAMES = {
    "LOAD": "INSTALL/LOAD",
    "SET": "SET/RESET/USE",
    "VACUUM": "VACUUM/ANALYZE",
    "MULTI": "PIVOT",
}
# `featstore sql --help`: what it runs, and an example
SQL_COMMAND_HELP = "run one read-only SELECT over the catalog"
EXAMPLE_QUERY = "SELECT dataset, split, count(*) FROM examples GROUP BY ALL"


class QueryRefused(FeatstoreError):
    """A user query that was refused, failed or was stopped, for the one-line reason in its message."""


def open_locked_down(catalog_path: Path) -> duckdb.DuckDBPyConnection:
    """A fresh read-only connection that cannot reach files, extensions, settings or Python variables."""
    try:
        return open_read_only(Path(catalog_path), LOCK_WAIT_S)
    except duckdb.ConnectionException as err:
        raise FeatstoreError(
            f"cannot open {catalog_path} for a user query while this process holds another connection to it "
            f"({one_line(err)}); close that connection first"
        ) from None


def single_select(con: duckdb.DuckDBPyConnection, query: str) -> duckdb.Statement:
    """The query's one statement, if DuckDB's own parser says it is a SELECT; otherwise QueryRefused."""
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as err:
        raise QueryRefused(f"query failed: {one_line(err)}") from None
    if len(statements) != 1:
        raise QueryRefused(f"refused: only one SELECT statement is allowed, got {len(statements)} statements")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        name = READABLE_STATEMENT_NAMES.get(kind.name, kind.name.replace("_", " "))
        raise QueryRefused(f"refused: {name} statements are not allowed (only SELECT)")
    return statements[0]


def _fetch_at_most(result: duckdb.DuckDBPyConnection, max_rows: int) -> pd.DataFrame:
    """The first max_rows rows of a streaming result, read chunk by chunk so the rest is never fetched."""
    frames = [result.fetch_df_chunk()]
    fetched = len(frames[0])
    while 0 < fetched < max_rows:
        frames.append(result.fetch_df_chunk())
        if frames[-1].empty:
            break
        fetched += len(frames[-1])
    return pd.concat(frames, ignore_index=True).head(max_rows)


class CatalogReader:
    """One locked-down read-only connection reused for a batch of user queries; close it (or leave the `with`
    block) promptly, since a writer waits for every reader to let go."""

    def __init__(self, catalog_path: Path):
        self.con = open_locked_down(catalog_path)

    def query(
        self, query: str, params: Sequence | Mapping | None = None, timeout_s: float = 30.0, max_rows: int | None = None
    ) -> pd.DataFrame:
        """The result of one user SELECT (`?` or `$name` params); max_rows keeps the first rows only."""
        _check_limits(timeout_s, max_rows)
        timer = threading.Timer(timeout_s, self.con.interrupt)
        timer.start()
        try:
            result = self.con.execute(single_select(self.con, query), params)
            return result.df() if max_rows is None else _fetch_at_most(result, max_rows)
        except duckdb.InterruptException:
            raise QueryRefused(f"query stopped after {timeout_s:g} s time limit") from None
        except duckdb.OutOfMemoryException as err:
            raise QueryRefused(
                f"query stopped: out of memory ({str(err).splitlines()[0].split(' Possible solutions')[0]})"
            ) from None
        except duckdb.PermissionException as err:
            raise QueryRefused(f"refused: file access is disabled in user queries ({one_line(err)})") from None
        except duckdb.Error as err:
            raise damaged_catalog(err) or QueryRefused(f"query failed: {one_line(err)}") from None
        finally:
            timer.cancel()
            timer.join()

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> CatalogReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def run_user_query(
    catalog_path: Path,
    query: str,
    params: Sequence | Mapping | None = None,
    timeout_s: float = 30.0,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """The result of one user SELECT on the catalog, on a connection opened for it alone."""
    _check_limits(timeout_s, max_rows)
    with CatalogReader(catalog_path) as reader:
        return reader.query(query, params, timeout_s, max_rows)


def run_bounded_query(catalog_path: Path, query: str, max_rows: int = DEFAULT_MAX_ROWS) -> pd.DataFrame:
    """One user SELECT run, fetched and capped in a forked child within USER_QUERY_BUDGET (time and memory);
    a result of more than `max_rows` rows or MAX_RESULT_BYTES bytes is refused, not cut."""
    if max_rows < 1:
        raise FeatstoreError(f"max_rows must be at least 1, got {max_rows}")
    budget = USER_QUERY_BUDGET
    return run_bounded(_capped_query, catalog_path, query, max_rows, budget.seconds, budget=budget, what="query")


def _capped_query(catalog_path: Path, query: str, max_rows: int, timeout_s: float) -> pd.DataFrame:
    frame = run_user_query(catalog_path, query, timeout_s=timeout_s, max_rows=max_rows + 1)
    if len(frame) > max_rows:
        raise QueryRefused(
            f"refused: the result has more than {max_rows:,} rows (--max-rows {max_rows}); "
            "add a LIMIT or an aggregate, or raise --max-rows"
        )
    size = int(frame.memory_usage(deep=True).sum())
    if size > MAX_RESULT_BYTES:
        raise QueryRefused(
            f"refused: the result holds {size / 2**20:,.0f} MiB, more than the {MAX_RESULT_BYTES / 2**20:,.0f} MiB "
            "allowed; select fewer or shorter columns"
        )
    return frame


def query_catalog(
    catalog_path: Path, query: str, params: Sequence | Mapping | None = None, reader: CatalogReader | None = None
) -> pd.DataFrame:
    """One user SELECT through `reader` when a batch of reads shares one, else on its own connection."""
    return reader.query(query, params) if reader is not None else run_user_query(catalog_path, query, params)


def _check_limits(timeout_s: float, max_rows: int | None) -> None:
    if not timeout_s > 0:
        raise FeatstoreError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
    if max_rows is not None and max_rows < 0:
        raise FeatstoreError(f"max_rows must be 0 or more, got {max_rows}")


def examples_where(
    catalog_path: Path, model: str, dataset: str, split: str, where: str, reader: CatalogReader | None = None
) -> np.ndarray:
    """The example ids of a built split whose `examples` and `features` columns meet a user's SQL condition (the
    `where=` of a view), run as a user query."""
    return query_catalog(
        catalog_path,
        "SELECT example_id FROM features f JOIN examples e USING (example_id, dataset, split) "
        f"WHERE model = $model AND dataset = $dataset AND split = $split AND ({where})",
        {"model": model, "dataset": dataset, "split": split},
        reader,
    )["example_id"].to_numpy()
