"""Small built stores for the extraction, view and probe tests (random:tiny, seconds to build)."""

from __future__ import annotations

from pathlib import Path

from featstore.catalog.splits import SplitParams
from featstore.datasets.cleaning import clean_datasets
from featstore.datasets.registry import load_registry
from featstore.extraction.build import BuildSettings, build_features
from featstore.project import Project, init_project
from tests.factories import registry_row, toy_raw, write_registry

MODEL = "random:tiny"


def toy_project(root: Path, n: int = 300) -> Project:
    """A cleaned project with one dataset `1_toy` (train 200, test 100 for n=300)."""
    project = init_project(root)
    project.raw_dir.mkdir(parents=True, exist_ok=True)
    toy_raw(n).to_csv(project.raw_dir / "toy.csv", index=False)
    write_registry(project, [registry_row(1, "toy", "toy.csv")])
    clean_datasets(project, load_registry(project), SplitParams())
    return project


def built_toy_project(root: Path, **settings) -> Project:
    project = toy_project(root)
    build_features(project, MODEL, None, BuildSettings(device="cpu", **settings))
    return project
