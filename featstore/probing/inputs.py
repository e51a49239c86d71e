"""What a probe is fitted and scored on: one split's features of a ProbeSpec, read from that split alone, and
the catalog check that every needed split is built with both classes before any fit starts.

Features: `attn` (a token aggregation of the attention rows), `resid` (the last-token residual) and `length`, the
length-only control: log(seq_len) and its square, so a probe can also use a length that is informative in a
middle range.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from featstore.catalog.database import catalog_reader
from featstore.catalog.features import split_class_counts
from featstore.errors import FeatstoreError
from featstore.probing.specs import LENGTH_FEATURE, ROWS_AGGREGATION, ProbeSpec, Stack
from featstore.project import Project
from featstore.views.aggregations import parse_aggregation
from featstore.views.matrix import to_matrix
from featstore.views.view import open_view
from probes import AttentionRows


@dataclass(frozen=True)
class FeatureMatrix:
    """One split's probe input: X (examples x features), labels, the examples' ids and the features' names."""

    X: np.ndarray
    y: np.ndarray
    example_ids: np.ndarray
    names: list[str]


def feature_matrix(project: Project, spec: ProbeSpec, split: str) -> FeatureMatrix:
    """The probe input of one split, read from that split alone: a matrix, lazy attention rows (read batch by
    batch while fitting), or one matrix per base setting of a stack."""
    if isinstance(spec.aggregation, Stack):
        bases = [
            feature_matrix(project, replace(spec, layers=base.layers, aggregation=base.aggregation), split)
            for base in spec.aggregation.bases
        ]
        return FeatureMatrix([b.X for b in bases], bases[0].y, bases[0].example_ids, [])
    rows = spec.aggregation == ROWS_AGGREGATION  # read in contiguous batches: straight through zarr is faster
    view = open_view(project, spec.dataset, split, model=spec.model, layers=list(spec.layers) or None, dask=not rows)
    if rows:
        names = [f"L{layer}.H{head}" for layer in view["layer"].values for head in view["head"].values]
        return FeatureMatrix(AttentionRows.from_view(view), view["label"].values, view["example_id"].values, names)
    if spec.feature == LENGTH_FEATURE:
        log_length = np.log(view["seq_len"].astype(np.float64))
        data = xr.Dataset({"log_seq_len": log_length, "log_seq_len_squared": log_length**2})
    elif spec.feature == "resid":
        data = view["resid"]
    else:
        data = parse_aggregation(spec.aggregation)[1](view["attn"])
    X, y, names = to_matrix(data)
    return FeatureMatrix(X, y, view["example_id"].values, names)


def check_splits(project: Project, specs: list[ProbeSpec], splits: tuple[str, ...]) -> None:
    """Fail before any fit when a needed split lacks complete features or has one class (from the catalog only)."""
    pairs = sorted({(s.dataset, s.model) for s in specs})
    if not pairs:
        return
    with catalog_reader(project) as con:
        counts = {(dataset, model): split_class_counts(con, model, dataset) for dataset, model in pairs}
    for (dataset, model), classes in counts.items():
        for split in splits:
            if split not in classes:
                raise FeatstoreError(
                    f"no complete {split} features of {dataset} for model {model!r}; run `featstore build` first"
                )
            if classes[split] < 2:
                raise FeatstoreError(f"{dataset}: the {split} split of {model} has one class only; probes need both")
