"""The rows a fit writes to the catalog: where a ProbeSpec's typed fields become the strings stored in
`probe_results`, and the result id that keys its test scores and head weights."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd

from featstore.probing.specs import ProbeSpec
from featstore.version import __version__

SCORE_COLUMNS = ["example_id", "score"]
HEAD_WEIGHT_COLUMNS = ["layer", "head", "weight"]


def result_row(spec: ProbeSpec, probe, scores: dict, n_train: int, seconds: float, probe_path: str) -> dict:
    """The `probe_results` row of a fitted probe scored on the test split (`scores` from `binary_scores`)."""
    return {
        "result_id": spec.result_id,
        "dataset": spec.dataset,
        "model": spec.model,
        "feature": spec.feature,
        "layers": spec.layers_label,
        "heads": "all",
        "aggregation": spec.aggregation_label,
        "probe": spec.probe,
        "baseline": spec.baseline,
        "hyperparameters": json.dumps(probe.chosen_hyperparameters()),
        "roc_auc": scores["roc_auc"],
        "roc_auc_ci_low": scores["roc_auc_ci_low"],
        "roc_auc_ci_high": scores["roc_auc_ci_high"],
        "accuracy": scores["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"],
        "f1": scores["f1"],
        "n_train": n_train,
        "n_test": scores["n"],
        "n_features": int(probe.n_features_in_),
        "seed": spec.seed,
        "control": spec.control,
        "fit_seconds": seconds,
        "featstore_version": __version__,
        "created_at": datetime.now(UTC).replace(tzinfo=None),
        "probe_path": probe_path,
    }


def keyed(frame: pd.DataFrame, result_id: str, columns: list[str]) -> pd.DataFrame:
    """`frame`'s columns with a result_id column first."""
    return frame[columns].assign(result_id=result_id)[["result_id", *columns]]
