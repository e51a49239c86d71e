"""The metrics every probe reports, computed in one place."""

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from probes.errors import ProbeInputError


def binary_scores(y_true: np.ndarray, scores: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """ROC AUC of `scores` plus accuracy, balanced accuracy and F1 of `preds`, for 0/1 labels `y_true`."""
    y_true = np.asarray(y_true)
    if np.unique(y_true).size != 2:
        raise ProbeInputError(f"ROC AUC needs both classes in y; got only {np.unique(y_true).tolist()}")
    return {
        "roc_auc": float(roc_auc_score(y_true, scores)),
        "accuracy": float(accuracy_score(y_true, preds)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, preds)),
        "f1": float(f1_score(y_true, preds, zero_division=0.0)),
        "n": int(y_true.size),
    }
