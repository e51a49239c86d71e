"""Raw files + registry rows -> cleaned files (`prompt`, `target`, `row`) and catalog rows.

Every selected dataset is read, extracted and validated before anything is written; cleaned files
replace the old ones only once all are staged, the catalog is updated in one transaction, and the old
files are put back when that transaction fails (a full disk, say). Features and probe results are dropped
only for datasets whose examples changed (`featstore.datasets.drops`), after `confirm` accepted them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as default_field
from pathlib import Path

import numpy as np
import pandas as pd

from featstore.catalog.database import catalog_writer, example_id
from featstore.catalog.datasets import DatasetRecord, indexed_fingerprints, replace_datasets
from featstore.catalog.splits import TEST, TRAIN, SplitParams, assign_splits
from featstore.datasets.drops import Drop, changed_datasets, delete_dropped, planned_drops
from featstore.datasets.expressions import evaluate_extraction
from featstore.datasets.registry import DatasetEntry
from featstore.errors import FeatstoreError
from featstore.project import Project
from featstore.session.holding import holding_store

Confirm = Callable[[list[Drop]], bool]  # shown the planned drops before anything is written; False: change nothing


@dataclass
class CleanOutcome:
    """What a clean did: the datasets re-cleaned (`cleaned`), those of them whose train/test examples are new or
    changed (`changed`), and the built work of those it dropped (`dropped`)."""

    cleaned: list[str] = default_field(default_factory=list)
    changed: list[str] = default_field(default_factory=list)
    dropped: list[Drop] = default_field(default_factory=list)


def clean_datasets(
    project: Project,
    entries: list[DatasetEntry],
    params: SplitParams,
    overwrite: bool = False,
    confirm: Confirm | None = None,
) -> CleanOutcome:
    """Clean and index `entries` (unchanged inputs are skipped unless `overwrite`); features and probe results of
    datasets whose examples changed are dropped, once `confirm` (when given) accepts the list.

    Holds the store's build lock: re-splitting a dataset while a build reads its examples would mix splits.
    """
    with holding_store(project, "featstore datasets clean"):
        return _clean_locked(project, entries, params, overwrite, confirm)


def _clean_locked(
    project: Project, entries: list[DatasetEntry], params: SplitParams, overwrite: bool, confirm: Confirm | None
) -> CleanOutcome:
    indexed = _indexed_fingerprints(project)
    fingerprints = {e.name: _fingerprint(project, e, params) for e in entries}
    todo = [
        e
        for e in entries
        if overwrite or indexed.get(e.name) != fingerprints[e.name] or not project.cleaned_path(e.name).exists()
    ]
    staged: dict[str, tuple[Path, pd.DataFrame]] = {}
    replaced: list[Path] = []
    try:
        for entry in todo:
            cleaned = clean_frame(project, entry)
            splits = assign_splits(entry.name, cleaned["row"].to_numpy(), cleaned["target"].to_numpy(), params)
            staging = project.cleaned_path(entry.name).with_suffix(".csv.staged")
            staging.parent.mkdir(parents=True, exist_ok=True)
            staged[entry.name] = (staging, _example_rows(entry, cleaned, splits))  # removed below if writing fails
            cleaned.to_csv(staging, index=False)
        changed, drops = _changes(project, {name: rows for name, (_, rows) in staged.items()})
        if drops and confirm is not None and not confirm(drops):
            raise FeatstoreError("nothing was changed: the features and probe results above are kept")
        try:
            for name, (staging, _) in staged.items():
                final = project.cleaned_path(name)
                if final.exists():
                    os.replace(final, _retired(final))
                replaced.append(final)
                os.replace(staging, final)
            if staged:
                _index(project, todo, staged, fingerprints, params, {drop.dataset for drop in drops})
        except BaseException:  # e.g. the catalog's commit failed for space: the old files go back with the old rows
            for final in replaced:
                if _retired(final).exists():
                    os.replace(_retired(final), final)
                else:
                    final.unlink(missing_ok=True)
            raise
    finally:
        for name, (staging, _) in staged.items():
            staging.unlink(missing_ok=True)
            _retired(project.cleaned_path(name)).unlink(missing_ok=True)
    delete_dropped(project, drops)
    return CleanOutcome(list(staged), changed, drops)


def _changes(project: Project, staged: dict[str, pd.DataFrame]) -> tuple[list[str], list[Drop]]:
    """The staged datasets whose examples are new or changed, and what indexing them drops."""
    if not staged or not project.catalog_path.exists():
        return list(staged), []
    with catalog_writer(project) as con:
        changed = changed_datasets(con, staged)
        return changed, planned_drops(project, con, changed)


def _retired(cleaned: Path) -> Path:
    """Where the previous cleaned file waits until the catalog has committed the new one."""
    return cleaned.with_suffix(".csv.retired")


def clean_frame(project: Project, entry: DatasetEntry) -> pd.DataFrame:
    """The cleaned examples of one dataset: text prompts and 0/1 targets, with their raw row numbers."""
    raw = read_raw(project, entry)
    for field, column in (("Probe from", entry.probe_from), ("Probe to", entry.probe_to)):
        if column not in raw.columns:
            raise FeatstoreError(
                f"{entry.where(repr(field))}: column {column!r} is not in datasets/raw/{entry.source} "
                f"(it has {', '.join(map(str, raw.columns))})"
            )
    prompts = evaluate_extraction(entry.prompt_extraction, raw[entry.probe_from], entry.where("Probe from extraction"))
    targets = evaluate_extraction(entry.target_extraction, raw[entry.probe_to], entry.where("Probe to extraction"))
    return pd.DataFrame(
        {
            "prompt": _checked_prompts(entry, prompts),
            "target": _binary_targets(entry, targets),
            "row": np.arange(len(raw), dtype=np.int64),
        }
    )


def raw_path(project: Project, entry: DatasetEntry) -> Path:
    """The dataset's source file with links followed, which must be a file inside `datasets/raw/`."""
    raw_dir = project.raw_dir.resolve()
    path = (project.raw_dir / entry.source).resolve()
    shown = f"{entry.where('source')}: datasets/raw/{entry.source}"
    if not path.is_relative_to(raw_dir):
        raise FeatstoreError(f"{shown} leads through a link to {path}, outside datasets/raw/; copy the file in instead")
    if path.is_dir():
        raise FeatstoreError(f"{shown} is a folder; name a file (CSV, compressed CSV or Parquet) inside it")
    if not path.is_file():
        raise FeatstoreError(f"{shown} does not exist")
    return path


def read_raw(project: Project, entry: DatasetEntry) -> pd.DataFrame:
    """The source file of a dataset (CSV, optionally compressed, or Parquet)."""
    path = raw_path(project, entry)
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as err:
        raise FeatstoreError(
            f"datasets/raw/{entry.source} cannot be read: {str(err).strip().splitlines()[0]}"
        ) from None


def _checked_prompts(entry: DatasetEntry, prompts: pd.Series) -> pd.Series:
    empty = prompts.isna() | (prompts.astype(str).str.strip() == "")
    if empty.any():
        raise FeatstoreError(
            f"{entry.where('prompt')}: missing or empty prompt in raw row {int(np.flatnonzero(empty)[0])}"
        )
    not_text = ~prompts.map(lambda value: isinstance(value, str))
    if not_text.any():
        row = int(np.flatnonzero(not_text)[0])
        raise FeatstoreError(f"{entry.where('prompt')}: raw row {row} is not text ({prompts.iloc[row]!r})")
    return prompts.reset_index(drop=True)


def _binary_targets(entry: DatasetEntry, targets: pd.Series) -> pd.Series:
    missing = targets.isna()
    if missing.any():
        raise FeatstoreError(f"{entry.where('target')}: missing label in raw row {int(np.flatnonzero(missing)[0])}")
    values = set(targets.unique().tolist())
    if values <= {0, 1} and all(isinstance(v, (bool, int, float, np.bool_, np.number)) for v in values):
        return targets.astype(np.int8).reset_index(drop=True)
    shown = ", ".join(repr(v) for v in sorted(values, key=str)[:5])
    raise FeatstoreError(
        f"{entry.where('Probe to extraction')}: labels are not binary (found {shown}); "
        'write an expression such as col == "yes"'
    )


def _example_rows(entry: DatasetEntry, cleaned: pd.DataFrame, splits: np.ndarray) -> pd.DataFrame:
    prompts = cleaned["prompt"]
    return pd.DataFrame(
        {
            "example_id": [example_id(entry.number, r) for r in cleaned["row"].tolist()],
            "dataset": entry.name,
            "row": cleaned["row"].astype(np.int32),
            "split": splits.astype(str),
            "label": cleaned["target"].astype(np.int8),
            "prompt": prompts,
            "n_chars": prompts.str.len().astype(np.int32),
            "prompt_hash": [hashlib.sha256(p.encode()).hexdigest()[:16] for p in prompts.tolist()],
        }
    )


def _index(
    project: Project,
    entries: list[DatasetEntry],
    staged: dict[str, tuple[Path, pd.DataFrame]],
    fingerprints: dict[str, str],
    params: SplitParams,
    dropped: set[str],
) -> None:
    """Replace the entries' examples and dataset rows; features and probe results go only for `dropped`."""
    indexed = [
        (_dataset_record(entry, staged[entry.name][1], fingerprints[entry.name], params), staged[entry.name][1])
        for entry in entries
    ]
    with catalog_writer(project) as con:
        replace_datasets(con, indexed, dropped)


def _dataset_record(entry: DatasetEntry, rows: pd.DataFrame, fingerprint: str, params: SplitParams) -> DatasetRecord:
    """The catalog row of a dataset cleaned into example `rows`."""
    labels = rows["label"].to_numpy()
    return DatasetRecord(
        entry.name,
        entry.number,
        entry.tag,
        entry.source,
        entry.probe_from,
        entry.probe_to,
        entry.prompt_extraction,
        entry.target_extraction,
        entry.data_type,
        len(rows),
        int(labels.sum()),
        int((labels == 0).sum()),
        int((rows["split"] == TRAIN).sum()),
        int((rows["split"] == TEST).sum()),
        json.dumps(params.as_dict()),
        fingerprint,
    )


def _indexed_fingerprints(project: Project) -> dict[str, str]:
    if not project.catalog_path.exists():
        return {}
    with catalog_writer(project) as con:
        return indexed_fingerprints(con)


def _fingerprint(project: Project, entry: DatasetEntry, params: SplitParams) -> str:
    digest = hashlib.sha256()
    fields = [
        entry.name,
        entry.source,
        entry.probe_from,
        entry.probe_to,
        entry.prompt_extraction,
        entry.target_extraction,
        entry.data_type,
        json.dumps(params.as_dict(), sort_keys=True),
    ]
    digest.update(json.dumps(fields).encode())
    with raw_path(project, entry).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
