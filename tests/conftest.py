"""Shared fixtures: small projects on disk with raw files and registry rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from featstore.project import Project, init_project
from tests.factories import registry_row, toy_raw, write_registry


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project with one raw file `toy.csv` and one registered dataset `1_toy`."""
    project = init_project(tmp_path / "proj")
    project.raw_dir.mkdir(parents=True)
    toy_raw().to_csv(project.raw_dir / "toy.csv", index=False)
    write_registry(project, [registry_row(1, "toy", "toy.csv")])
    return project
