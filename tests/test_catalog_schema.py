"""The catalog's schema runs once per version of it: an up-to-date catalog is opened for writing without a write,
an older one (no version recorded, or another version) is brought up to date."""

from __future__ import annotations

import hashlib

import duckdb
import pytest

from featstore.catalog.database import SCHEMA_VERSION, catalog_writer
from featstore.project import Project


@pytest.fixture
def project(tmp_path) -> Project:
    project = Project(tmp_path)
    with catalog_writer(project):
        pass
    return project


def columns(project: Project, table: str) -> set[str]:
    with duckdb.connect(str(project.catalog_path), read_only=True) as con:
        return {row[0] for row in con.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall()}


def test_a_new_catalog_records_its_schema_version(project) -> None:
    with duckdb.connect(str(project.catalog_path), read_only=True) as con:
        assert con.execute("SELECT version FROM featstore_schema").fetchall() == [(SCHEMA_VERSION,)]


def test_an_up_to_date_catalog_is_opened_without_writing(project) -> None:
    before = hashlib.sha256(project.catalog_path.read_bytes()).hexdigest()
    with catalog_writer(project) as con:
        assert con.execute("SELECT count(*) FROM feature_splits").fetchone() == (0,)
    assert hashlib.sha256(project.catalog_path.read_bytes()).hexdigest() == before  # digests: a bytes diff is slow


@pytest.mark.parametrize("recorded", [None, "an older schema"])
def test_an_older_catalog_is_brought_up_to_date(project, recorded) -> None:
    with catalog_writer(project) as con:
        con.execute("ALTER TABLE probe_results DROP COLUMN control")
        if recorded is None:
            con.execute("DROP TABLE featstore_schema")
        else:
            con.execute("UPDATE featstore_schema SET version = ?", [recorded])
    assert "control" not in columns(project, "probe_results")
    with catalog_writer(project):
        pass
    assert "control" in columns(project, "probe_results")
    with duckdb.connect(str(project.catalog_path), read_only=True) as con:
        assert con.execute("SELECT version FROM featstore_schema").fetchall() == [(SCHEMA_VERSION,)]
