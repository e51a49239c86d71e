"""Where things live inside a project directory (registry, raw and cleaned data, store)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featstore.errors import FeatstoreError

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
    """A project directory: `datasets/main.csv`, the data files beside it, and `store/`."""

    root: Path

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
    def features_dir(self) -> Path:
        return self.store_dir / "features.zarr"

    @property
    def tokenizers_dir(self) -> Path:
        return self.store_dir / "tokenizers"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def probes_dir(self) -> Path:
        return self.store_dir / "probes"

    @property
    def lock_path(self) -> Path:
        return self.store_dir / ".write.lock"

    @property
    def probe_lock_path(self) -> Path:
        """Held while saved probes and their catalog rows are written, so writers never interleave."""
        return self.store_dir / ".probes.lock"

    def cleaned_path(self, dataset: str) -> Path:
        return self.cleaned_dir / f"{dataset}.csv"


def open_project(root: str | Path = ".") -> Project:
    """The project at `root`, which must hold `datasets/main.csv` (see `featstore init`)."""
    project = Project(Path(root).resolve())
    if not project.registry_path.is_file():
        raise FeatstoreError(
            f"{project.root} is not a featstore project (no datasets/main.csv); "
            "run `featstore init` there or pass --root"
        )
    return project


def init_project(root: str | Path) -> Project:
    """Create an empty project directory (idempotent: an existing registry is kept)."""
    project = Project(Path(root).resolve())
    project.datasets_dir.mkdir(parents=True, exist_ok=True)
    project.store_dir.mkdir(parents=True, exist_ok=True)
    if not project.registry_path.exists():
        project.registry_path.write_text(",".join(REGISTRY_COLUMNS) + "\n")
    gitignore = project.root / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("store/\ndatasets/raw/\ndatasets/cleaned/\n")
    return project
