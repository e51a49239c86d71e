"""The metrics every probe reports, computed in one place."""

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from probes.errors import ProbeInputError

CI_LEVEL = 0.95


def binary_scores(y_true: np.ndarray, scores: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """ROC AUC of `scores` with its 95 % DeLong interval, plus accuracy, balanced accuracy and F1 of `preds`."""
    y_true = np.asarray(y_true)
    if np.unique(y_true).size != 2:
        raise ProbeInputError(f"ROC AUC needs both classes in y; got only {np.unique(y_true).tolist()}")
    low, high = roc_auc_ci(y_true, scores)
    return {
        "roc_auc": float(roc_auc_score(y_true, scores)),
        "roc_auc_ci_low": low,
        "roc_auc_ci_high": high,
        "accuracy": float(accuracy_score(y_true, preds)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, preds)),
        "f1": float(f1_score(y_true, preds, zero_division=0.0)),
        "n": int(y_true.size),
    }


def delong_components(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components: for each positive, the fraction of negatives it outranks
    (ties count half), and for each negative, the fraction of positives that outrank it.

    Computed from midranks in O(n log n) (Sun & Xu 2014) instead of the O(m n) pairwise comparison.
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives, negatives = scores[y_true], scores[~y_true]
    m, n = positives.size, negatives.size
    if m == 0 or n == 0:
        raise ProbeInputError("ROC AUC needs both classes in y")
    ranks = rankdata(np.concatenate([positives, negatives]))
    positive_over = (ranks[:m] - rankdata(positives)) / n
    negative_under = 1.0 - (ranks[m:] - rankdata(negatives)) / m
    return float(positive_over.mean()), positive_over, negative_under


def roc_auc_ci(y_true: np.ndarray, scores: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """DeLong's normal-approximation confidence interval of the ROC AUC, clipped to [0, 1].

    Variance = var(positive components) / m + var(negative components) / n (DeLong, DeLong & Clarke-Pearson 1988).
    """
    if not 0 < level < 1:
        raise ProbeInputError(f"level must lie in (0, 1), got {level!r}")
    auc, positive_over, negative_under = delong_components(y_true, scores)
    variance = 0.0
    for components in (positive_over, negative_under):
        if components.size > 1:
            variance += components.var(ddof=1) / components.size
    half_width = ndtri(0.5 + level / 2) * np.sqrt(variance)
    return float(max(auc - half_width, 0.0)), float(min(auc + half_width, 1.0))
