"""The paired DeLong test, Holm's adjustment and the bootstrap interval against plain references."""

import numpy as np
import pytest
from scipy.special import ndtr
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from probes.errors import ProbeInputError
from probes.metrics import bootstrap_mean_interval, holm, paired_auc_difference


def brute_force_delong(y, a, b):
    """Both AUCs and their DeLong covariance by the O(m n) pairwise kernel (ties count half)."""
    y = y.astype(bool)
    components = []
    for scores in (a, b):
        kernel = (scores[y][:, None] > scores[~y][None, :]) + 0.5 * (scores[y][:, None] == scores[~y][None, :])
        components.append((kernel.mean(axis=1), kernel.mean(axis=0), kernel.mean()))
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(np.column_stack([components[0][0], components[1][0]]), rowvar=False)
    s01 = np.cov(np.column_stack([components[0][1], components[1][1]]), rowvar=False)
    return components[0][2], components[1][2], s10 / m + s01 / n


def correlated_scores(rng, n, shift_a, shift_b, rho, positive_rate=0.4):
    y = (rng.random(n) < positive_rate).astype(int)
    noise = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    return y, shift_a * y + noise[:, 0], shift_b * y + noise[:, 1]


def test_paired_delong_matches_the_pairwise_kernel_with_ties():
    rng = np.random.default_rng(3)
    y, a, b = correlated_scores(rng, 120, 1.0, 0.6, 0.5)
    a, b = np.round(a, 1), np.round(b, 0)  # many ties, within and across classes
    auc_a, auc_b, covariance = brute_force_delong(y, a, b)
    result = paired_auc_difference(y, a, b)
    assert result.auc_a == pytest.approx(auc_a) and result.auc_b == pytest.approx(auc_b)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a))
    se = np.sqrt(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    assert result.delta == pytest.approx(auc_a - auc_b)
    assert (result.ci_high - result.ci_low) / 2 == pytest.approx(1.959964 * se, rel=1e-5)
    assert result.p_value == pytest.approx(2 * ndtr(-abs(auc_a - auc_b) / se), rel=1e-6)
    assert result.n == 120


def test_paired_interval_width_matches_a_paired_bootstrap():
    rng = np.random.default_rng(4)
    y, a, b = correlated_scores(rng, 600, 1.2, 0.9, 0.6)
    result = paired_auc_difference(y, a, b)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    # stratified: each resample keeps the class counts, as DeLong's variance assumes; AUCs from midranks
    rows = np.concatenate(
        [rng.choice(positives, (2000, positives.size)), rng.choice(negatives, (2000, negatives.size))], axis=1
    )
    m, n = positives.size, negatives.size

    def aucs(scores):
        return (rankdata(scores[rows], axis=1)[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)

    deltas = aucs(a) - aucs(b)
    low, high = np.quantile(deltas, [0.025, 0.975])
    assert (result.ci_high - result.ci_low) == pytest.approx(high - low, rel=0.10)


def test_paired_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(5)
    shift_a, shift_b = 1.0, 0.7
    truth = ndtr(shift_a / np.sqrt(2)) - ndtr(shift_b / np.sqrt(2))  # binormal AUCs, unit variances
    covered = 0
    simulations = 400
    for _ in range(simulations):
        result = paired_auc_difference(*correlated_scores(rng, 300, shift_a, shift_b, 0.5))
        covered += result.ci_low <= truth <= result.ci_high
    assert 0.92 <= covered / simulations <= 0.98


def test_identical_scores_differ_by_nothing():
    y = np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.9, 0.3, 0.4, 0.8, 0.2])
    result = paired_auc_difference(y, scores, scores)
    assert (result.delta, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_scores_of_different_lengths_are_refused():
    with pytest.raises(ProbeInputError, match="same examples"):
        paired_auc_difference(np.array([0, 1, 1]), np.zeros(3), np.zeros(2))


def test_holm_matches_a_hand_computed_case():
    # five tests (NaN is not one), sorted: 0.01x5=0.05, 0.02x4=0.08, 0.03x3=0.09, 0.04x2=0.08 -> 0.09 (kept
    # non-decreasing), 0.5x1=0.5
    adjusted = holm(np.array([0.03, 0.5, 0.01, np.nan, 0.04, 0.02]))
    np.testing.assert_allclose(adjusted, [0.09, 0.5, 0.05, np.nan, 0.09, 0.08])
    np.testing.assert_allclose(holm(np.array([0.6, 0.9])), [1.0, 1.0])  # 0.6x2 capped at 1; 0.9 raised to it


def test_bootstrap_mean_interval_is_seeded_and_brackets_the_mean():
    values = np.array([0.02, -0.01, 0.05, 0.03, 0.00, 0.04])
    low, high = bootstrap_mean_interval(values, seed=1)
    assert (low, high) == bootstrap_mean_interval(values, seed=1)
    assert low < values.mean() < high and values.min() <= low and high <= values.max()
    assert bootstrap_mean_interval(np.array([0.3])) == (0.3, 0.3)
