"""Small built stores for the extraction, view and probe tests (random:tiny, seconds to build)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import zarr
from zarr.storage import LocalStore

from featstore.catalog.safe_sql import query_catalog
from featstore.catalog.splits import SplitParams
from featstore.datasets.cleaning import clean_datasets
from featstore.datasets.registry import load_registry
from featstore.extraction.build import build_features
from featstore.extraction.plan import BuildSettings
from featstore.project import Project, init_project
from featstore.store.integrity import MANIFEST, ROOT, SEAL, RecordingStore, seal_value
from featstore.store.layout import COMPLETE, split_prefix
from tests.factories import registry_row, toy_raw, write_registry

MODEL = "random:tiny"


def toy_project(root: Path, n: int = 300, store: str | None = None) -> Project:
    """A cleaned project with one dataset `1_toy` (train 200, test 100 for n=300), its features kept in `store`
    (a folder or URL) when given."""
    project = init_project(root, store)
    project.raw_dir.mkdir(parents=True, exist_ok=True)
    toy_raw(n).to_csv(project.raw_dir / "toy.csv", index=False)
    write_registry(project, [registry_row(1, "toy", "toy.csv")])
    clean_datasets(project, load_registry(project), SplitParams())
    return project


def build_argv(project: Project, *options: str) -> list[str]:
    """The arguments of `featstore build` of the toy model on the CPU in `project` (for `main`)."""
    return ["--root", str(project.root), "build", "--model", MODEL, "--device", "cpu", *options]


def build_command(project: Project, *options: str) -> list[str]:
    """The same build as the command line of a child process (one a test kills or interrupts)."""
    return [sys.executable, "-m", "featstore.cli", *build_argv(project, *options)]


def built_toy_project(root: Path, **settings) -> Project:
    project = toy_project(root)
    build_features(project, MODEL, None, BuildSettings(device="cpu", **settings))
    return project


def published_folder(project: Project, split: str, model: str = MODEL, dataset: str = "1_toy") -> Path:
    """The folder of the version of a split that the catalog points to."""
    found = query_catalog(
        project.catalog_path,
        "SELECT path FROM feature_splits WHERE model = ? AND dataset = ? AND split = ?",
        [model, dataset, split],
    )
    return project.store_dir / found["path"][0]


def wait_for_a_written_shard(process, project: Project, split: str = "train") -> list[int]:
    """Poll a build running in `process` until a shard of `split` is recorded written (or it ends, or 120 s
    pass); returns the shards written then."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            building = building_folder(project, split)
            written = zarr.open_group(building, mode="r").attrs.get("shards_written") if building else None
            if written:
                return written
        except (FileNotFoundError, KeyError, ValueError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    return []


def building_folder(project: Project, split: str, model: str = MODEL, dataset: str = "1_toy") -> Path | None:
    """The unpublished version folder of a split being built (None when there is none)."""
    prefix = project.store_dir / split_prefix(model, dataset, split)
    found = sorted(v for v in prefix.iterdir() if v.is_dir() and not (v / COMPLETE).exists()) if prefix.is_dir() else []
    return found[0] if found else None


def new_version_folder(project: Project, split: str, model: str = MODEL, dataset: str = "1_toy") -> Path:
    """A path for a fresh (not yet created) version folder of a split."""
    from featstore.store.layout import new_version

    return project.store_dir / split_prefix(model, dataset, split) / new_version()


def rewrite_stored(project: Project, split: str, write: Callable[[zarr.Group], None]) -> None:
    """Change a published split of `1_toy` as a build would have written it (manifest and seal updated), so a test
    sees what readers do with unusual values rather than a damaged store."""
    folder = published_folder(project, split)
    recorder = RecordingStore(LocalStore(folder))
    group = zarr.open_group(recorder, mode="r+")
    recorder.manifest.update(group.attrs[MANIFEST])
    write(group)
    group.attrs[MANIFEST] = recorder.manifest
    group.attrs[SEAL] = seal_value(json.loads((folder / ROOT).read_bytes()))
