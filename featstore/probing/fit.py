"""Fitting one ProbeSpec on its train split and scoring it on its test split, or re-scoring a saved probe.

Fitting reads only the train split and scoring only the test split. The shuffled-label control
(`control="shuffled-labels"`) fits the same probe on the training labels permuted (seeded): its test AUC should
sit near 0.5, and a setting whose control does not shows a leak through the split, the padding or the prompt length.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from featstore.catalog.splits import TEST, TRAIN
from featstore.errors import FeatstoreError
from featstore.probing.families import FAMILIES, SHUFFLED_LABELS
from featstore.probing.head_weights import head_weights
from featstore.probing.inputs import FeatureMatrix, feature_matrix
from featstore.probing.probe_files import new_probe_path
from featstore.probing.rows import HEAD_WEIGHT_COLUMNS, SCORE_COLUMNS, keyed, result_row
from featstore.probing.saved_probes import logs_key, read_probe
from featstore.probing.specs import ProbeSpec
from featstore.project import Project
from probes import ProbeInputError, binary_scores


@dataclass
class Fitted:
    """What one fit or re-evaluation writes: the result row, its test scores, and (after a fit) the probe,
    its head weights and the folder of its learning curves; plus the warnings raised on the way."""

    row: dict
    scores: pd.DataFrame
    probe: object | None = None
    head_weights: pd.DataFrame | None = None
    logs: Path | None = None
    warnings: list[tuple] = field(default_factory=list)


def fit_and_score(project: Project, spec: ProbeSpec, scratch: Path) -> Fitted:
    """Fit on the train split, score on the test split; learning curves (if the probe keeps any) go to `scratch`."""
    train = feature_matrix(project, spec, TRAIN)
    if spec.control == SHUFFLED_LABELS:
        train = replace(train, y=shuffled(train.y, spec.seed))
    probe = FAMILIES[spec.probe].make(spec.seed)
    probe_path = new_probe_path(spec)
    logs = None
    if "log_dir" in probe.get_params():  # learning curves, moved in beside the saved probe when it is written
        logs = scratch / spec.result_id
        probe.set_params(log_dir=str(logs))
    started = time.perf_counter()
    with _probe_errors(spec):
        probe.fit(train.X, train.y)
    if logs is not None:
        probe.set_params(log_dir=project.store.describe(logs_key(probe_path)))
    seconds = time.perf_counter() - started
    weights = head_weights(standardised_weights(probe, train), train.names)
    n_train = len(train.y)
    del train
    row, scores = _score(project, spec, probe, seconds, n_train, probe_path)
    return Fitted(row, scores, probe, keyed(weights, spec.result_id, HEAD_WEIGHT_COLUMNS), logs)


def shuffled(labels: np.ndarray, seed: int) -> np.ndarray:
    """The labels permuted by a generator seeded with `seed`: the shuffled-label control's training labels."""
    return labels[np.random.default_rng(seed).permutation(len(labels))]


def reevaluate(project: Project, spec: ProbeSpec, previous: dict) -> Fitted:
    """Score a saved probe on the test split again, without refitting (reads no train data)."""
    key = previous["probe_path"]
    probe = read_probe(project, key)
    if type(probe) is not type(FAMILIES[spec.probe].make(spec.seed)):
        raise FeatstoreError(
            f"the saved probe {project.store.describe(key)} is a {type(probe).__name__}, not a "
            f"{spec.probe} probe; refit it with --overwrite-train"
        )
    row, scores = _score(project, spec, probe, previous["fit_seconds"], previous["n_train"], previous["probe_path"])
    return Fitted({**row, "created_at": previous["created_at"]}, scores)


def _score(
    project: Project, spec: ProbeSpec, probe, fit_seconds: float, n_train: int, probe_path: str
) -> tuple[dict, pd.DataFrame]:
    """The result row and the per-example decision scores of a fitted probe on the test split."""
    test = feature_matrix(project, spec, TEST)
    with _probe_errors(spec):
        decision = probe.decision_function(test.X)  # once: scoring lazy rows is a pass over the split
        metrics = binary_scores(test.y == probe.classes_[1], decision, decision > 0)
    scores = pd.DataFrame({"example_id": test.example_ids.astype(np.int64), "score": decision})
    row = result_row(spec, probe, metrics, n_train, fit_seconds, probe_path)
    return row, keyed(scores, spec.result_id, SCORE_COLUMNS)


def standardised_weights(probe, train: FeatureMatrix) -> np.ndarray:
    """What the probe puts on each feature of `train.names`, on standardised features: a linear probe's weights
    times the features' training standard deviations, or a learned row probe's per-head importance."""
    weights = probe.standardised_weights(train.X)
    return np.zeros(len(train.names)) if weights is None else weights


@contextmanager
def _probe_errors(spec: ProbeSpec) -> Iterator[None]:
    """A probe's refusal (one class, NaN, shapes) as a one-line featstore error naming the combination."""
    try:
        yield
    except ProbeInputError as err:
        setting = f"{spec.feature}, {spec.aggregation_label}, {spec.probe}"
        raise FeatstoreError(f"{spec.dataset} ({setting}): {err}") from None
