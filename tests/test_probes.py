"""Tests of the probe library against closed-form Bayes AUCs and plain scikit-learn/numpy references."""

import tracemalloc

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.base import clone
from sklearn.covariance import ledoit_wolf, ledoit_wolf_shrinkage
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from probes import (
    LogisticRegressionProbe,
    MassMeanProbe,
    ProbeInputError,
    binary_scores,
    probe_metrics,
    shrunk_covariance_solve,
)
from probes.metrics import delong_components, roc_auc_ci

PROBES = [LogisticRegressionProbe(), MassMeanProbe(), MassMeanProbe(tilt="lda")]


def gaussian_classes(n: int, delta: np.ndarray, cov: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced classes N(-delta/2, cov) and N(+delta/2, cov)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    X = rng.multivariate_normal(np.zeros(len(delta)), cov, size=n) + (y[:, None] - 0.5) * delta
    return X, y


def bayes_auc(delta: np.ndarray, cov: np.ndarray) -> float:
    return float(norm.cdf(np.sqrt(delta @ np.linalg.solve(cov, delta) / 2)))


def direction_auc(w: np.ndarray, delta: np.ndarray, cov: np.ndarray) -> float:
    """Exact population ROC AUC of the score w @ x for the two Gaussian classes."""
    return float(norm.cdf(w @ delta / np.sqrt(2 * w @ cov @ w)))


def correlated_problem(d: int = 20, target_auc: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    mixing = rng.standard_normal((d, d))
    cov = mixing @ mixing.T / d + 0.5 * np.eye(d)
    delta = rng.standard_normal(d)
    delta *= np.sqrt(2 * norm.ppf(target_auc) ** 2 / (delta @ np.linalg.solve(cov, delta)))
    return delta, cov


def small_data(n: int = 300, d: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X[:, 0] + X[:, 1] + rng.standard_normal(n) > 0).astype(int)
    return X, y


def test_binary_scores_by_hand():
    scores = binary_scores(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 1, 0, 1]))
    assert list(scores) == ["roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "accuracy", "balanced_accuracy", "f1", "n"]
    # components: positives 0.5 and 1, negatives 1 and 0.5; variance 0.125/2 + 0.125/2; half width 1.96 * 0.3536
    assert scores["roc_auc_ci_low"] == pytest.approx(0.75 - norm.ppf(0.975) * np.sqrt(0.125))
    assert scores["roc_auc_ci_high"] == 1.0
    del scores["roc_auc_ci_low"], scores["roc_auc_ci_high"]
    assert scores == {"roc_auc": 0.75, "accuracy": 0.5, "balanced_accuracy": 0.5, "f1": 0.5, "n": 4}


def test_delong_components_equal_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    scores = rng.integers(0, 12, 200).astype(float)  # many ties
    pos, neg = scores[y == 1], scores[y == 0]
    pairwise = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc, positive_over, negative_under = delong_components(y, scores)
    np.testing.assert_allclose(positive_over, pairwise.mean(axis=1))
    np.testing.assert_allclose(negative_under, pairwise.mean(axis=0))
    assert auc == pytest.approx(roc_auc_score(y, scores))


def test_delong_interval_covers_the_population_auc_and_matches_a_bootstrap():
    delta, cov = np.array([1.2]), np.eye(1)
    true_auc = bayes_auc(delta, cov)
    covered, widths, bootstrap_widths = 0, [], []
    for seed in range(300):
        X, y = gaussian_classes(200, delta, cov, seed)
        low, high = roc_auc_ci(y, X[:, 0])
        covered += low <= true_auc <= high
        widths.append(high - low)
        if seed < 20:
            rng = np.random.default_rng(seed)
            draws = [rng.integers(0, len(y), len(y)) for _ in range(400)]
            aucs = [roc_auc_score(y[i], X[i, 0]) for i in draws if 0 < y[i].sum() < len(y)]
            bootstrap_widths.append(np.subtract(*np.percentile(aucs, [97.5, 2.5])))
    assert 0.92 <= covered / 300 <= 0.98
    assert np.mean(widths[:20]) == pytest.approx(np.mean(bootstrap_widths), rel=0.1)


def test_delong_interval_of_a_perfect_separation_is_a_point():
    assert roc_auc_ci(np.array([0, 0, 1, 1]), np.array([0.0, 1.0, 2.0, 3.0])) == (1.0, 1.0)


@pytest.mark.parametrize("probe", PROBES, ids=["logreg", "mass-mean", "lda"])
def test_feature_weights_give_the_decision_function_up_to_a_constant(probe):
    X, y = small_data()
    fitted = clone(probe).fit(X, y)
    offset = fitted.decision_function(X) - X @ fitted.feature_weights()
    np.testing.assert_allclose(offset, offset[0], atol=1e-8)
    assert fitted.feature_weights().shape == (X.shape[1],)


def test_binary_scores_refuses_one_class():
    with pytest.raises(ProbeInputError, match="both classes"):
        binary_scores(np.ones(4), np.arange(4.0), np.ones(4))


@pytest.mark.parametrize("probe", [LogisticRegressionProbe(), MassMeanProbe(tilt="lda")], ids=["logreg", "lda"])
def test_reaches_bayes_auc_under_correlated_covariance(probe):
    delta, cov = correlated_problem()
    X, y = gaussian_classes(4000, delta, cov, seed=2)
    X_test, y_test = gaussian_classes(20000, delta, cov, seed=3)
    probe.fit(X, y)
    w = probe.coef_.ravel() if isinstance(probe, LogisticRegressionProbe) else probe.direction_
    population_auc = direction_auc(w, delta, cov)
    assert population_auc > bayes_auc(delta, cov) - 0.02
    assert probe_metrics(probe, X_test, y_test)["roc_auc"] == pytest.approx(population_auc, abs=0.01)


def test_plain_mass_mean_reaches_bayes_auc_under_isotropic_covariance():
    delta, cov = np.full(20, 0.45), 2.0 * np.eye(20)
    X, y = gaussian_classes(2000, delta, cov, seed=4)
    probe = MassMeanProbe().fit(X, y)
    assert direction_auc(probe.direction_, delta, cov) > bayes_auc(delta, cov) - 0.02
    np.testing.assert_allclose(probe.direction_, X[y == 1].mean(0) - X[y == 0].mean(0))


def test_lda_tilt_beats_plain_mass_mean_under_a_correlated_nuisance():
    d = 10
    nuisance = np.zeros(d)
    nuisance[:2] = 1 / np.sqrt(2)
    cov = np.eye(d) + 100 * np.outer(nuisance, nuisance)
    delta = np.zeros(d)
    delta[0] = 2.0
    X, y = gaussian_classes(2000, delta, cov, seed=5)
    X_test, y_test = gaussian_classes(10000, delta, cov, seed=6)
    plain = probe_metrics(MassMeanProbe().fit(X, y), X_test, y_test)["roc_auc"]
    tilted = probe_metrics(MassMeanProbe(tilt="lda").fit(X, y), X_test, y_test)["roc_auc"]
    assert plain < 0.65 and tilted > bayes_auc(delta, cov) - 0.02
    assert tilted - plain > 0.15


@pytest.mark.parametrize(("n", "d"), [(12, 40), (40, 12)])
@pytest.mark.parametrize("shrinkage", [0.3, None])
def test_shrunk_covariance_solve_matches_dense_solve(n, d, shrinkage):
    rng = np.random.default_rng(7)
    Z = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    Z -= Z.mean(axis=0)
    v = rng.standard_normal(d)
    solution, used = shrunk_covariance_solve(Z, v, shrinkage)
    if shrinkage is None:
        assert used == pytest.approx(ledoit_wolf_shrinkage(Z, assume_centered=True), rel=1e-10)
        covariance = ledoit_wolf(Z, assume_centered=True)[0]
    else:
        mu = np.trace(Z.T @ Z / n) / d
        covariance = (1 - shrinkage) * Z.T @ Z / n + shrinkage * mu * np.eye(d)
    np.testing.assert_allclose(solution, np.linalg.solve(covariance, v), rtol=1e-8)


def test_shrunk_covariance_solve_refuses_singular_covariance():
    Z = np.random.default_rng(8).standard_normal((5, 20))
    with pytest.raises(ProbeInputError, match="singular"):
        shrunk_covariance_solve(Z, np.ones(20), shrinkage=0.0)


@pytest.mark.parametrize("d", [8, 60])
def test_lda_direction_is_ledoit_wolf_solve_of_class_centred_data(d):
    X, y = small_data(n=40, d=d)
    probe = MassMeanProbe(tilt="lda").fit(X, y)
    means = np.stack([X[y == 0].mean(0), X[y == 1].mean(0)])
    covariance, shrinkage = ledoit_wolf(X - means[y], assume_centered=True)
    assert probe.shrinkage_ == pytest.approx(shrinkage, rel=1e-10)
    np.testing.assert_allclose(probe.direction_, np.linalg.solve(covariance, means[1] - means[0]), rtol=1e-8)


def test_lda_fit_stays_in_n_by_d_memory():
    n, d = 200, 50_000
    rng = np.random.default_rng(9)
    X = rng.standard_normal((n, d), dtype=np.float32)
    y = np.arange(n) % 2
    X[:, :10] += y[:, None].astype(np.float32)
    tracemalloc.start()
    probe = MassMeanProbe(tilt="lda").fit(X, y)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * X.nbytes < d * d * 8 / 100
    assert probe_metrics(probe, X, y)["roc_auc"] > 0.99


def test_mass_mean_threshold_and_probabilities_are_lda_on_the_projection():
    X, y = gaussian_classes(400, *correlated_problem(d=8), seed=12)
    probe = MassMeanProbe(tilt="lda").fit(X, y)
    decision = probe.decision_function(X)
    assert decision[y == 1].mean() == pytest.approx(-decision[y == 0].mean())
    reference = LinearDiscriminantAnalysis(solver="lsqr", priors=[0.5, 0.5]).fit(decision[:, None], y)
    np.testing.assert_allclose(probe.predict_proba(X), reference.predict_proba(decision[:, None]), rtol=1e-8)


@pytest.mark.parametrize("probe", PROBES, ids=["logreg", "mass_mean", "lda"])
def test_predict_agrees_with_predict_proba(probe):
    X, y = small_data()
    probe.fit(X, y)
    proba = probe.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probe.predict(X), (proba[:, 1] > 0.5).astype(int))


def test_logistic_probe_refits_on_all_rows_with_the_chosen_c():
    X, y = small_data(n=500, d=40)
    probe = LogisticRegressionProbe().fit(X, y)
    assert probe.C_ in probe.Cs_ and len(probe.Cs_) == 10
    X_fit, X_val, y_fit, y_val = train_test_split(X, y, test_size=100, stratify=y, random_state=0)
    cold_aucs = [
        roc_auc_score(y_val, LogisticRegression(C=C, max_iter=1000).fit(X_fit, y_fit).decision_function(X_val))
        for C in probe.Cs_
    ]
    np.testing.assert_allclose(probe.validation_aucs_, cold_aucs, atol=2e-3)
    full = LogisticRegression(C=probe.C_, max_iter=1000, random_state=0).fit(X, y)
    np.testing.assert_allclose(probe.coef_, full.coef_, rtol=1e-10)
    np.testing.assert_allclose(probe.intercept_, full.intercept_, rtol=1e-10)
    subset = LogisticRegression(C=probe.C_, max_iter=1000, random_state=0).fit(X_fit, y_fit)
    assert not np.allclose(probe.coef_, subset.coef_, rtol=1e-3)
    assert probe.chosen_hyperparameters() == {"C": probe.C_, "validation_auc": probe.validation_auc_}


def test_logistic_probe_breaks_validation_ties_like_sae_probes_first_in_grid():
    rng = np.random.default_rng(10)
    y = np.arange(200) % 2
    X = rng.standard_normal((200, 5))
    X[:, 0] += 10 * (2 * y - 1)
    probe = LogisticRegressionProbe().fit(X, y)
    np.testing.assert_array_equal(probe.validation_aucs_, 1.0)
    assert probe.C_ == pytest.approx(1e5)
    assert LogisticRegressionProbe(Cs=[1e-3, 1.0]).fit(X, y).C_ == pytest.approx(1e-3)


def test_standardized_logistic_probe_folds_the_scaler_into_coef():
    X, y = small_data()
    X = X * np.logspace(-2, 2, X.shape[1]) + 5.0
    probe = LogisticRegressionProbe(standardize=True, Cs=[0.05]).fit(X, y)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=1000, random_state=0)).fit(X, y)
    np.testing.assert_allclose(probe.decision_function(X), reference.decision_function(X), rtol=1e-8)


def test_l1_probe_gives_sparse_coefficients():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((600, 60))
    y = (X[:, :3].sum(axis=1) + rng.standard_normal(600) > 0).astype(int)
    l1 = LogisticRegressionProbe(penalty="l1", Cs=[0.05]).fit(X, y)
    l2 = LogisticRegressionProbe(penalty="l2", Cs=[0.05]).fit(X, y)
    assert np.count_nonzero(l1.coef_) <= 20 and np.all(l1.coef_[0, :3] != 0)
    assert np.count_nonzero(l2.coef_) == 60


@pytest.mark.parametrize("probe", PROBES, ids=["logreg", "mass_mean", "lda"])
def test_clone_round_trips_params(probe):
    probe = clone(probe).set_params(random_state=3)
    copy = clone(probe.fit(*small_data()))
    assert copy.get_params() == probe.get_params()
    assert not hasattr(copy, "classes_")


@pytest.mark.parametrize("probe", PROBES, ids=["logreg", "mass_mean", "lda"])
@pytest.mark.parametrize("scoring", ["roc_auc", "accuracy"])
def test_cross_val_score_matches_manual_folds(probe, scoring):
    X, y = small_data()
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scores = cross_val_score(probe, X, y, cv=folds, scoring=scoring)
    manual = [probe_metrics(clone(probe).fit(X[tr], y[tr]), X[te], y[te])[scoring] for tr, te in folds.split(X, y)]
    np.testing.assert_allclose(scores, manual)
    assert scoring != "roc_auc" or scores.mean() > 0.8


@pytest.mark.parametrize("probe", PROBES, ids=["logreg", "mass_mean", "lda"])
def test_torch_tensors_give_the_numpy_results(probe):
    X, y = small_data()
    expected = clone(probe).fit(X, y).decision_function(X)
    X_torch = torch.from_numpy(X)
    np.testing.assert_array_equal(probe.fit(X_torch, torch.from_numpy(y)).decision_function(X_torch), expected)
    as_bfloat16 = X_torch.to(torch.bfloat16)
    widened = as_bfloat16.float().numpy()
    expected = clone(probe).fit(widened, y).decision_function(widened)
    np.testing.assert_array_equal(probe.fit(as_bfloat16, y).decision_function(as_bfloat16), expected)


@pytest.mark.parametrize("probe", PROBES, ids=["logreg", "mass_mean", "lda"])
def test_string_labels_come_back_from_predict(probe):
    X, y = small_data()
    labels = np.where(y == 1, "pos", "neg")
    probe.fit(X, labels)
    assert set(probe.predict(X)) <= {"neg", "pos"}
    assert probe_metrics(probe, X, labels) == probe_metrics(probe.fit(X, y), X, y)


@pytest.mark.parametrize("probe", PROBES, ids=["logreg", "mass_mean", "lda"])
@pytest.mark.parametrize(("bad", "message"), [(np.nan, "NaN"), (np.inf, "infinity")])
def test_non_finite_features_are_refused(probe, bad, message):
    X, y = small_data()
    X_bad = X.copy()
    X_bad[3, 2] = bad
    with pytest.raises(ProbeInputError, match=message) as error:
        probe.fit(X_bad, y)
    assert "\n" not in str(error.value)
    with pytest.raises(ProbeInputError, match=message):
        probe.fit(X, y).predict(X_bad)


@pytest.mark.parametrize("probe", PROBES, ids=["logreg", "mass_mean", "lda"])
def test_labels_need_exactly_two_classes(probe):
    X, y = small_data()
    with pytest.raises(ProbeInputError, match="exactly two classes"):
        probe.fit(X, np.ones_like(y))
    with pytest.raises(ProbeInputError, match="exactly two classes"):
        probe.fit(X, np.arange(len(y)) % 3)


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        (LogisticRegressionProbe(penalty="l3"), "penalty"),
        (LogisticRegressionProbe(Cs=[1.0, -1.0]), "Cs"),
        (LogisticRegressionProbe(validation_size=0.005), "validation set of 1"),
        (MassMeanProbe(tilt="qda"), "tilt"),
        (MassMeanProbe(tilt="lda", shrinkage=2.0), "shrinkage"),
    ],
)
def test_bad_hyperparameters_are_refused(probe, message):
    with pytest.raises(ProbeInputError, match=message):
        probe.fit(*small_data())


def test_scoring_inputs_are_checked():
    X, y = small_data()
    probe = MassMeanProbe().fit(X, y)
    with pytest.raises(ProbeInputError, match="features"):
        probe.predict(X[:, :4])
    with pytest.raises(ProbeInputError, match="rows"):
        probe_metrics(probe, X, y[:10])
    with pytest.raises(ProbeInputError, match="both classes"):
        probe_metrics(probe, X[y == 1], y[y == 1])


def test_logistic_probe_fits_on_one_blas_thread_so_its_answer_does_not_depend_on_the_machine(monkeypatch):
    from threadpoolctl import threadpool_info

    seen = []
    original = LogisticRegression.fit

    def recording_fit(self, X, y, *args, **kwargs):
        seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return original(self, X, y, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", recording_fit)
    with threadpool_limits(limits=2, user_api="blas"):
        LogisticRegressionProbe(Cs=[1.0, 0.1]).fit(*small_data(n=200, d=10))
    assert seen and set(seen) == {1}
