"""Import the SAE-Probes benchmark's binary datasets from the `sae-probes` distribution.

The data ship inside the PyPI package; it is read without importing it (importing runs code that
needs sae-lens and an older TransformerLens): from an installed distribution, a wheel file or a
directory, or from a wheel that `pip download --no-deps` fetches.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import pandas as pd

from featstore.catalog.names import DatasetNames
from featstore.catalog.splits import SplitParams
from featstore.datasets.cleaning import CleanOutcome, Confirm, clean_datasets
from featstore.datasets.registry import (
    BINARY,
    parse_registry,
    read_registry_frame,
    registry_replaced_after,
    select_entries,
)
from featstore.errors import FeatstoreError
from featstore.project import Project

DISTRIBUTION = "sae-probes"
MASTER = "probing_datasets_MASTER.csv.zst"
DATA_PREFIX = "sae_probes/data/"


class PackageData:
    """Read-only access to the files under `sae_probes/data/` of a wheel, a directory or an installation."""

    def __init__(self, files: dict[str, object], opener, origin: str):
        self._files, self._open, self.origin = files, opener, origin

    def read(self, relative: str) -> bytes:
        if relative not in self._files:
            raise FeatstoreError(f"{self.origin} has no sae_probes/data/{relative}")
        return self._open(self._files[relative])

    @classmethod
    def from_wheel(cls, wheel: Path) -> PackageData:
        try:
            archive = zipfile.ZipFile(wheel)
        except (zipfile.BadZipFile, OSError) as err:
            raise FeatstoreError(f"{wheel} is not a readable wheel: {err}") from None
        files = {n[len(DATA_PREFIX) :]: n for n in archive.namelist() if n.startswith(DATA_PREFIX)}
        return cls(files, archive.read, str(wheel))

    @classmethod
    def from_directory(cls, directory: Path) -> PackageData:
        masters = sorted(directory.rglob(MASTER))
        if not masters:
            raise FeatstoreError(f"{directory} holds no {MASTER} (expected the sae_probes/data folder)")
        data_dir = masters[0].parent
        files = {p.relative_to(data_dir).as_posix(): p for p in data_dir.rglob("*") if p.is_file()}
        return cls(files, Path.read_bytes, str(directory))

    @classmethod
    def installed(cls) -> PackageData | None:
        try:
            distribution = importlib.metadata.distribution(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            return None
        files = {
            str(f)[len(DATA_PREFIX) :]: distribution.locate_file(f)
            for f in distribution.files or []
            if str(PurePosixPath(f)).startswith(DATA_PREFIX)
        }
        return cls(files, lambda p: Path(p).read_bytes(), f"the installed {DISTRIBUTION} distribution")


def locate_package_data(source: Path | None, cache_dir: Path) -> PackageData:
    """The benchmark data: from `source`, else an installed distribution, else a downloaded wheel."""
    if source is not None:
        if not source.exists():
            raise FeatstoreError(f"--source {source} does not exist")
        return PackageData.from_directory(source) if source.is_dir() else PackageData.from_wheel(source)
    installed = PackageData.installed()
    if installed is not None:
        return installed
    cached = sorted(cache_dir.glob("sae_probes-*.whl"))
    if not cached:
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--dest",
            str(cache_dir),
            DISTRIBUTION,
        ]
        completed = subprocess.run(command, capture_output=True, text=True)
        cached = sorted(cache_dir.glob("sae_probes-*.whl"))
        if completed.returncode != 0 or not cached:
            reason = (completed.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise FeatstoreError(f"could not download {DISTRIBUTION} with pip ({reason}); pass --source WHEEL_OR_DIR")
    return PackageData.from_wheel(cached[-1])


def benchmark_rows(data: PackageData) -> pd.DataFrame:
    """The master CSV's binary-classification rows, with `number`, `tag` and `file` derived from the save name."""
    master = pd.read_csv(io.BytesIO(data.read(MASTER)), compression="zstd", dtype=str, keep_default_na=False)
    binary = master[master["Data type"] == BINARY].copy()
    stems = binary["Dataset save name"].map(lambda s: PurePosixPath(s).name.removesuffix(".csv"))
    binary["number"] = stems.str.split("_", n=1).str[0]
    binary["tag"] = stems.str.split("_", n=1).str[1]
    binary["file"] = "cleaned_data/" + stems + ".csv.zst"
    return binary


def registry_row(master_row: pd.Series, raw: pd.DataFrame, source: str) -> dict:
    """A `main.csv` row for one benchmark dataset; string labels are encoded as SAE-Probes' LabelEncoder does."""
    labels = sorted(raw["target"].dropna().unique().tolist())
    textual = any(isinstance(v, str) for v in labels)
    target_expression = f"col == {json.dumps(str(labels[-1]))}" if textual else "col"
    return {
        "number": master_row["number"],
        "Source": master_row.get("Source", ""),
        "Dataset name": master_row.get("Dataset name", ""),
        "Dataset Tag": master_row["tag"],
        "Dataset save name": master_row["Dataset save name"],
        "Link": master_row.get("Link", ""),
        "Probe from": "prompt",
        "Probe to": "target",
        "Data type": BINARY,
        "Notes": master_row.get("Notes", ""),
        "source": source,
        "Probe from extraction": "col",
        "Probe to extraction": target_expression,
    }


def import_sae_probes(
    project: Project,
    source: Path | None,
    only: list[str] | None,
    params: SplitParams,
    overwrite: bool = False,
    confirm: Confirm | None = None,
) -> CleanOutcome:
    """Copy the benchmark's binary datasets into `datasets/raw/`, register them and clean them (features and
    probe results of datasets whose examples changed are dropped once `confirm` accepts, see `clean_datasets`)."""
    existing = read_registry_frame(project)
    parse_registry(existing)
    data = locate_package_data(source, project.store_dir / ".cache")
    benchmark = benchmark_rows(data)
    if only:
        offered = DatasetNames(
            tuple(benchmark["number"] + "_" + benchmark["tag"]),
            tuple(benchmark["number"]),
            tuple(benchmark["tag"]),
            "an SAE-Probes binary dataset",
        )
        benchmark = benchmark[(benchmark["number"] + "_" + benchmark["tag"]).isin(offered.resolve_all(only))]
    project.raw_dir.mkdir(parents=True, exist_ok=True)
    new_rows, created = [], []
    try:
        for _, master_row in benchmark.iterrows():
            payload = data.read(master_row["file"])
            target = project.raw_dir / f"{master_row['number']}_{master_row['tag']}.csv.zst"
            if not target.exists():
                created.append(target)
            _write_atomically(target, payload)
            raw = pd.read_csv(io.BytesIO(payload), compression="zstd", usecols=["target"])
            new_rows.append(registry_row(master_row, raw, target.name))
        frame = _merged_registry(existing, pd.DataFrame(new_rows, dtype=str))
        entries = select_entries(parse_registry(frame), [f"{r['number']}_{r['Dataset Tag']}" for r in new_rows])
        with registry_replaced_after(project, frame):
            return clean_datasets(project, entries, params, overwrite=overwrite, confirm=confirm)
    except BaseException:
        for path in created:  # nothing half-written: raw files this run added go again
            path.unlink(missing_ok=True)
        raise


def _merged_registry(existing: pd.DataFrame, imported: pd.DataFrame) -> pd.DataFrame:
    """The registry with imported rows replacing rows of the same number (a different tag there is an error)."""
    current = dict(zip(existing["number"].str.strip(), existing["Dataset Tag"].str.strip(), strict=False))
    for number, tag in zip(imported["number"], imported["Dataset Tag"], strict=False):
        if number in current and current[number] != tag:
            raise FeatstoreError(
                f"datasets/main.csv already uses number {number} for {current[number]!r}; "
                f"SAE-Probes numbers it {number}_{tag}"
            )
    replaced = existing["number"].str.strip().isin(set(imported["number"]))
    by_number = imported.set_index("number", drop=False)
    updated = [
        by_number.loc[n].to_dict() if r else row
        for n, r, row in zip(existing["number"].str.strip(), replaced, existing.to_dict("records"), strict=False)
    ]
    appended = imported[~imported["number"].isin(set(existing["number"].str.strip()))].to_dict("records")
    return pd.DataFrame(updated + appended, columns=list(dict.fromkeys([*existing.columns, *imported.columns]))).fillna(
        ""
    )


def _write_atomically(path: Path, payload: bytes) -> None:
    """Write through a temporary file beside `path`, removed again when the write fails (e.g. a full disk)."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, delete=False)
    try:
        with handle:
            handle.write(payload)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
