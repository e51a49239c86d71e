"""The metrics every probe reports and the statistics comparing them, computed in one place: a fitted probe's
metrics, one AUC's DeLong interval, the paired DeLong test of two AUCs on the same examples, Holm's adjustment,
and a seeded bootstrap interval of a mean."""

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from probes.base import BinaryProbe, as_numpy
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


def probe_metrics(probe: BinaryProbe, X, y) -> dict[str, float]:
    """The metrics of a fitted probe on (X, y), see binary_scores: what a run records, where the probe's own score
    is scikit-learn's mean accuracy."""
    decision = probe.decision_function(X)
    y = np.asarray(as_numpy(y)).ravel()
    name = type(probe).__name__
    if y.size != decision.size:
        raise ProbeInputError(f"{name}: X has {decision.size} rows but y has {y.size}")
    unknown = np.setdiff1d(y, probe.classes_)
    if unknown.size:
        raise ProbeInputError(f"{name}: y has labels {unknown.tolist()} unseen in fit")
    return binary_scores(y == probe.classes_[1], decision, decision > 0)


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
    variance = float(delong_covariance(positive_over[:, None], negative_under[:, None])[0, 0])
    half_width = ndtri(0.5 + level / 2) * np.sqrt(variance)
    return float(max(auc - half_width, 0.0)), float(min(auc + half_width, 1.0))


def delong_covariance(positive_over: np.ndarray, negative_under: np.ndarray) -> np.ndarray:
    """(k, k) DeLong covariance of k AUCs on the same examples, from their (m, k) positive and (n, k) negative
    structural components: S10 / m + S01 / n, each S the components' sample covariance across examples."""
    covariance = np.zeros((positive_over.shape[1],) * 2)
    for components in (positive_over, negative_under):
        if components.shape[0] > 1:
            covariance += np.atleast_2d(np.cov(components, rowvar=False)) / components.shape[0]
    return covariance


@dataclass(frozen=True)
class PairedAUC:
    """AUC(a) - AUC(b) on the same examples: the difference, its DeLong interval and two-sided p-value."""

    auc_a: float
    auc_b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int


def paired_auc_difference(
    y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, level: float = CI_LEVEL
) -> PairedAUC:
    """The paired DeLong test of two scorings of the same examples (DeLong, DeLong & Clarke-Pearson 1988): the
    difference's variance is var(a) + var(b) - 2 cov(a, b) of the structural components, so the shared
    examples' difficulty cancels. A zero variance (identical rankings) gives p = 1 when the AUCs are equal."""
    if not 0 < level < 1:
        raise ProbeInputError(f"level must lie in (0, 1), got {level!r}")
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64).ravel(), np.asarray(scores_b, dtype=np.float64).ravel()
    if scores_a.size != scores_b.size or scores_a.size != np.asarray(y_true).size:
        raise ProbeInputError(
            f"paired AUCs need scores of the same examples: {scores_a.size} and {scores_b.size} "
            f"scores for {np.asarray(y_true).size} labels"
        )
    auc_a, over_a, under_a = delong_components(y_true, scores_a)
    auc_b, over_b, under_b = delong_components(y_true, scores_b)
    covariance = delong_covariance(np.column_stack([over_a, over_b]), np.column_stack([under_a, under_b]))
    delta = auc_a - auc_b
    variance = max(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1], 0.0)
    half_width = ndtri(0.5 + level / 2) * np.sqrt(variance)
    if variance > 0:
        p_value = float(2 * ndtr(-abs(delta) / np.sqrt(variance)))
    else:
        p_value = 1.0 if np.isclose(delta, 0.0) else 0.0
    return PairedAUC(
        auc_a, auc_b, delta, float(delta - half_width), float(delta + half_width), p_value, int(scores_a.size)
    )


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate): the k-th
    smallest is multiplied by (n - k + 1), made non-decreasing, capped at 1; NaN stays NaN and is not counted."""
    p_values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p_values.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p_values))
    order = present[np.argsort(p_values[present], kind="stable")]
    scaled = p_values[order] * (len(order) - np.arange(len(order)))
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def bootstrap_mean_interval(
    values: np.ndarray, level: float = CI_LEVEL, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """The percentile interval of the mean of `values`, from `resamples` seeded bootstrap resamples (of the
    values, e.g. one per dataset); a single value gives (value, value)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ProbeInputError("a mean's interval needs at least one value")
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)
