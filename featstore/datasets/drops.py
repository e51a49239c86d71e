"""What re-cleaning a dataset drops: its built features and probe results, only when its examples changed.

A dataset's examples changed when the digest of its train and test rows (example id, split, label, prompt)
differs from the catalog's: a new registry row, raw file or split option that yields the same examples keeps
everything built from them. Drops are planned (and shown) before anything is written, and their files are
deleted from the store after the catalog has committed: only version folders featstore names and the probe
files of the dropped results.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from featstore.catalog.datasets import built_work, indexed_examples, results_query
from featstore.catalog.splits import FEATURE_SPLITS
from featstore.project import Project
from featstore.sizes import format_bytes
from featstore.store.layout import PROBES, is_version_name, model_dir_name, split_prefix

SHOWN_RESULTS = 8  # result settings named per dataset before "and N more"


@dataclass
class Drop:
    """One changed dataset's built work: feature splits (model, split), probe results and their store files."""

    dataset: str
    splits: list[tuple[str, str]] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(self.files.values())

    def describe(self) -> str:
        """One line naming the splits, the results (up to SHOWN_RESULTS settings) and the bytes."""
        splits = ", ".join(f"{model} {split}" for model, split in self.splits) or "none"
        shown = "; ".join(self.settings[:SHOWN_RESULTS])
        more = len(self.settings) - SHOWN_RESULTS
        if more > 0:
            shown += f'; and {more} more (featstore sql "{results_query(self.dataset)}")'
        results = f"{len(self.results)} probe result(s)" + (f" ({shown})" if self.results else "")
        return f"{self.dataset}: features {splits}; {results}; {format_bytes(self.nbytes)}"


def examples_digest(rows: pd.DataFrame) -> str:
    """SHA-256 of a dataset's train and test examples (example_id, split, label, prompt), in example_id order."""
    kept = rows[rows["split"].isin(FEATURE_SPLITS)].sort_values("example_id")
    digest = hashlib.sha256()
    columns = (kept[name].tolist() for name in ("example_id", "split", "label", "prompt"))
    for example, split, label, prompt in zip(*columns, strict=True):
        digest.update(f"{int(example)}\t{split}\t{int(label)}\t{len(prompt)}\t{prompt}\n".encode())
    return digest.hexdigest()


def changed_datasets(con: duckdb.DuckDBPyConnection, staged: dict[str, pd.DataFrame]) -> list[str]:
    """The datasets among `staged` (new example rows by dataset) that are new or whose examples differ from the
    catalog's."""
    changed = []
    for dataset, rows in staged.items():
        indexed = indexed_examples(con, dataset)
        if indexed.empty or examples_digest(indexed) != examples_digest(rows):
            changed.append(dataset)
    return changed


def planned_drops(project: Project, con: duckdb.DuckDBPyConnection, changed: list[str]) -> list[Drop]:
    """What re-indexing the `changed` datasets drops: those with features or probe results, with every store
    file the drop deletes."""
    drops = []
    for dataset in changed:
        splits, results = built_work(con, dataset)
        if not splits and not results:
            continue
        drop = Drop(
            dataset,
            splits,
            [r[0] for r in results],
            [
                f"{model} {probe} {feature} layers {layers} {aggregation}"
                for _, model, probe, feature, layers, aggregation in results
            ],
        )
        for model, split in drop.splits:
            prefix = split_prefix(model, dataset, split)
            for name in project.store.children(prefix):
                if is_version_name(name):
                    drop.files.update(project.store.sizes(f"{prefix}/{name}"))
        drop.files.update(_probe_files(project, dataset, results))
        drops.append(drop)
    return drops


def delete_dropped(project: Project, drops: list[Drop]) -> None:
    """Delete the dropped files from the store (after the catalog no longer refers to them)."""
    for drop in drops:
        project.store.delete(sorted(drop.files))


def _probe_files(project: Project, dataset: str, results: list[tuple]) -> dict[str, int]:
    """The saved probes (and learning curves) of these results: `probes/<model>/<dataset>/<result_id>-<fit>...`."""
    files = {}
    for model in sorted({row[1] for row in results}):
        prefix = f"{PROBES}/{model_dir_name(model)}/{dataset}"
        ids = {row[0] for row in results if row[1] == model}
        for key, size in project.store.sizes(prefix).items():
            if key[len(prefix) + 1 :].split("/", 1)[0].split("-", 1)[0] in ids:
                files[key] = size
    return files
