"""Shared fixtures: small projects on disk with raw files and registry rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from featstore.cli import main
from featstore.project import Project, init_project, open_project
from tests.builders import MODEL, built_toy_project
from tests.factories import registry_row, toy_raw, write_registry
from tests.object_servers import moto_s3, seaweed_s3  # noqa: F401  (S3 servers on loopback, for any test)

REPORTED_PROBE_RUNS = (
    ["--baseline"],
    ["--feature", "length"],
    ["--aggregation", "first", "bins:4"],
    ["--each-layer", "--aggregation", "entropy"],
)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project with one raw file `toy.csv` and one registered dataset `1_toy`."""
    project = init_project(tmp_path / "proj")
    project.raw_dir.mkdir(parents=True)
    toy_raw().to_csv(project.raw_dir / "toy.csv", index=False)
    write_registry(project, [registry_row(1, "toy", "toy.csv")])
    return project


@pytest.fixture(scope="session")
def toy_template(tmp_path_factory) -> Project:
    """A built toy project shared by the tests that copy it (never modify it: use `toy_copy`)."""
    return built_toy_project(tmp_path_factory.mktemp("template") / "p")


@pytest.fixture
def toy_copy(toy_template: Project, tmp_path: Path) -> Project:
    """A private copy of the built toy project, for a test that probes, interrupts or damages it."""
    return open_project(shutil.copytree(toy_template.root, tmp_path / "p"))


@pytest.fixture(scope="session")
def reported(tmp_path_factory) -> Project:
    """A built toy project with a baseline, the length control, attention settings and a per-layer sweep,
    and its report written (shared by the report's data and browser tests; treat it as read-only)."""
    project = built_toy_project(tmp_path_factory.mktemp("report") / "p")
    for args in REPORTED_PROBE_RUNS:
        assert main(["--root", str(project.root), "probe", "--model", MODEL, *args]) == 0
    assert main(["--root", str(project.root), "report"]) == 0
    return project
