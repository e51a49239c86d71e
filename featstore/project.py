"""Where things live inside a project directory (registry, raw and cleaned data, store)."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from featstore.errors import FeatstoreError
from featstore.store.location import LocalLocation, StoreLocation, store_location
from featstore.store.safe_paths import checked_name

SETTINGS_FILE = "featstore.toml"
STORE_VARIABLE = "FEATSTORE_STORE"

REGISTRY_COLUMNS = [
    "number",
    "Source",
    "Dataset name",
    "Dataset Tag",
    "Dataset save name",
    "Link",
    "Probe from",
    "Probe to",
    "Data type",
    "Notes",
    "source",
    "Probe from extraction",
    "Probe to extraction",
]


@dataclass(frozen=True)
class Project:
    """A project directory: `datasets/main.csv`, the data files beside it, and `store/` (the catalog, locks
    and caches). Features and probe files live in `store` (by default that same `store/` folder)."""

    root: Path
    store: StoreLocation = field(default=None)

    def __post_init__(self) -> None:
        if self.store is None:
            object.__setattr__(self, "store", LocalLocation(self.store_dir))

    @property
    def store_is_remote(self) -> bool:
        """Whether features live elsewhere than the project's own `store/` folder (then the catalog and
        datasets are mirrored there too)."""
        return not (isinstance(self.store, LocalLocation) and self.store.root == self.store_dir)

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def registry_path(self) -> Path:
        return self.datasets_dir / "main.csv"

    @property
    def raw_dir(self) -> Path:
        return self.datasets_dir / "raw"

    @property
    def cleaned_dir(self) -> Path:
        return self.datasets_dir / "cleaned"

    @property
    def store_dir(self) -> Path:
        return self.root / "store"

    @property
    def catalog_path(self) -> Path:
        return self.store_dir / "catalog.duckdb"

    @property
    def tokenizers_dir(self) -> Path:
        return self.store_dir / "tokenizers"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def settings_path(self) -> Path:
        return self.root / SETTINGS_FILE

    @property
    def probe_lock_path(self) -> Path:
        """Held while saved probes and their catalog rows are written, so writers never interleave."""
        return self.store_dir / ".probes.lock"

    def cleaned_path(self, dataset: str) -> Path:
        """The cleaned file of a dataset (its name is checked: it may come from a cloned catalog)."""
        return self.cleaned_dir / f"{checked_name(dataset, 'dataset')}.csv"


def open_project(root: str | Path = ".", store: str | None = None) -> Project:
    """The project at `root`, which must hold `datasets/main.csv` (see `featstore init`); its store is `store`,
    else $FEATSTORE_STORE, else the URL in `featstore.toml`, else its own `store/` folder."""
    root = Path(root).resolve()
    if not (root / "datasets" / "main.csv").is_file():
        raise FeatstoreError(
            f"{root} is not a featstore project (no datasets/main.csv); run `featstore init` there or pass --root"
        )
    url = store or os.environ.get(STORE_VARIABLE) or configured_store(root)
    return Project(root, store_location(url) if url else None)


def configured_store(root: Path) -> str | None:
    """The store URL written in a project's `featstore.toml`, if any."""
    path = root / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        settings = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise FeatstoreError(f"{path} is not valid TOML: {err}") from None
    url = settings.get("store", {}).get("url")
    if url is not None and not isinstance(url, str):
        raise FeatstoreError(f"{path}: store.url must be a string")
    return url


def init_project(root: str | Path, store: str | None = None) -> Project:
    """Create an empty project directory (idempotent: an existing registry is kept); `store` (a folder or
    URL) is written to `featstore.toml` as the project's store."""
    project = Project(Path(root).resolve(), store_location(store) if store else None)
    if store:
        project.root.mkdir(parents=True, exist_ok=True)
        project.settings_path.write_text(
            f"# featstore project settings (credentials come from the environment)\n"
            f"[store]\nurl = {json.dumps(project.store.url)}\n"
        )
    project.datasets_dir.mkdir(parents=True, exist_ok=True)
    project.store_dir.mkdir(parents=True, exist_ok=True)
    if not project.registry_path.exists():
        project.registry_path.write_text(",".join(REGISTRY_COLUMNS) + "\n")
    gitignore = project.root / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("store/\ndatasets/raw/\ndatasets/cleaned/\n")
    return project
