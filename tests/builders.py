"""Small built stores for the extraction, view and probe tests (random:tiny, seconds to build)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import zarr
from zarr.storage import LocalStore

from featstore.catalog.splits import SplitParams
from featstore.datasets.cleaning import clean_datasets
from featstore.datasets.registry import load_registry
from featstore.extraction.build import BuildSettings, build_features
from featstore.project import Project, init_project
from featstore.store.integrity import MANIFEST, ROOT, SEAL, RecordingStore, seal_value
from featstore.store.layout import split_path
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


def rewrite_stored(project: Project, split: str, write: Callable[[zarr.Group], None]) -> None:
    """Change a published split of `1_toy` as a build would have written it (manifest and seal updated), so a test
    sees what readers do with unusual values rather than a damaged store."""
    folder = split_path(project.features_dir, MODEL, "1_toy", split)
    recorder = RecordingStore(LocalStore(folder))
    group = zarr.open_group(recorder, mode="r+")
    recorder.manifest.update(group.attrs[MANIFEST])
    write(group)
    group.attrs[MANIFEST] = recorder.manifest
    group.attrs[SEAL] = seal_value(json.loads((folder / ROOT).read_bytes()))
