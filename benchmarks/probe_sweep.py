"""Probe sweep cost: today's logistic-regression protocol against a second-order solver of the same objective,
and a sweep of fits in one process against fits in parallel processes, in the same run.

Today's protocol (probes/logistic.py, the SAE-Probes recipe): float32 features, scikit-learn's lbfgs
(tol 1e-4) warm-started along the C grid on 80 % of the train rows, C chosen by validation ROC AUC, then a
cold refit on all rows. The comparison solves the same objective (L2 on the raw weights, unpenalised
intercept, same split, same C grid) with scikit-learn's newton-cholesky in float64. A third column fits
today's protocol in float64: how far today's answers move when only the precision changes (its own noise).

Prints per problem: seconds per fit, time ratio, chosen C equal?, test ROC AUC difference, then the sweep
time with --jobs processes against one process. Data: real last-token residuals of a built store
(--root, --model, --layer; all datasets built for the model), else synthetic residuals shaped like
SmolLM2-135M's (576 features, a few dimensions hundreds of times larger than the rest).

Run: python benchmarks/probe_sweep.py [--root PROJECT --model smollm2-135m --layer 15] [--jobs 2]
"""

from __future__ import annotations

import argparse
import time
import warnings

import joblib
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score

from probes import LogisticRegressionProbe


def synthetic_problems(
    n_problems: int, n_train: int = 1000, n_test: int = 1000, n_features: int = 576, seed: int = 0
) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Residual-like data: correlated features, a few outlier dimensions, a weak linear label signal."""
    rng = np.random.default_rng(seed)
    problems = []
    for index in range(n_problems):
        mixing = rng.normal(size=(n_features, n_features)) / np.sqrt(n_features)
        scales = np.exp(rng.normal(1.5, 0.6, n_features))
        scales[rng.choice(n_features, 4, replace=False)] *= [30, 60, 120, 250]
        X = (rng.normal(size=(n_train + n_test, n_features)) @ mixing) * scales
        direction = rng.normal(size=n_features) / scales
        logit = X @ direction
        y = (logit / logit.std() * 0.8 + rng.logistic(size=len(X)) > 0).astype(int)
        X = X.astype(np.float32)
        problems.append((f"synthetic-{index}", X[:n_train], y[:n_train], X[n_train:], y[n_train:]))
    return problems


def store_problems(
    root: str, model: str, layer: int
) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The last-token residual at one layer of every dataset built for `model` in a project."""
    from featstore.probing.inputs import feature_matrix
    from featstore.probing.plan import ProbeRequest, plan_specs
    from featstore.project import open_project

    project = open_project(root)
    specs = plan_specs(project, ProbeRequest(model=model, baseline=True, baseline_layer=layer))
    problems = []
    for spec in specs:
        train, test = feature_matrix(project, spec, "train"), feature_matrix(project, spec, "test")
        problems.append((spec.dataset, train.X, train.y, test.X, test.y))
    return problems


class NewtonProbe(LogisticRegressionProbe):
    """Today's protocol with scikit-learn's newton-cholesky solver, in float64."""

    def _pipeline(self, C, warm_start):
        pipeline = super()._pipeline(C, warm_start)
        pipeline["model"].set_params(solver="newton-cholesky")
        return pipeline

    def _fit_inputs(self, X, y):
        X, y = super()._fit_inputs(X, y)
        return X.astype(np.float64), y


class Float64Probe(LogisticRegressionProbe):
    """Today's protocol, lbfgs included, in float64."""

    def _fit_inputs(self, X, y):
        X, y = super()._fit_inputs(X, y)
        return X.astype(np.float64), y


def timed_fit(
    probe, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray
) -> tuple[float, float, float]:
    """Seconds to fit, the chosen C, and test ROC AUC."""
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(X, y)
    seconds = time.perf_counter() - started
    return seconds, probe.C_, roc_auc_score(y_test, probe.decision_function(X_test))


def sweep(problems: list, jobs: int) -> float:
    """Seconds to fit today's protocol on every problem, in `jobs` processes (1: this process)."""
    started = time.perf_counter()
    joblib.Parallel(n_jobs=jobs)(
        joblib.delayed(timed_fit)(LogisticRegressionProbe(), *problem[1:]) for problem in problems
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="a featstore project with built features (default: synthetic data)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--problems", type=int, default=4, help="synthetic problems (without --root)")
    parser.add_argument("--jobs", type=int, default=2, help="processes for the parallel sweep")
    args = parser.parse_args()
    problems = store_problems(args.root, args.model, args.layer) if args.root else synthetic_problems(args.problems)
    print(
        f"{'problem':28s} {'today s':>8s} {'newton s':>8s} {'ratio':>6s} {'C equal':>8s} {'dAUC':>8s} "
        f"{'f64-lbfgs C equal':>18s} {'dAUC':>8s}"
    )
    ratios, deltas, noise = [], [], []
    for name, X, y, X_test, y_test in problems:
        today = timed_fit(LogisticRegressionProbe(), X, y, X_test, y_test)
        newton = timed_fit(NewtonProbe(), X, y, X_test, y_test)
        precise = timed_fit(Float64Probe(), X, y, X_test, y_test)
        ratios.append(today[0] / newton[0])
        deltas.append(abs(newton[2] - today[2]))
        noise.append(abs(precise[2] - today[2]))
        print(
            f"{name[:28]:28s} {today[0]:8.2f} {newton[0]:8.2f} {ratios[-1]:6.2f} {str(newton[1] == today[1]):>8s} "
            f"{newton[2] - today[2]:+8.4f} {str(precise[1] == today[1]):>18s} {precise[2] - today[2]:+8.4f}"
        )
    print(
        f"time per fit, today / newton-cholesky: median {np.median(ratios):.2f}x; max |dAUC| newton {max(deltas):.4f}, "
        f"float64 lbfgs {max(noise):.4f}"
    )
    one, many = sweep(problems, 1), sweep(problems, args.jobs)
    print(
        f"sweep of {len(problems)} fits: one process {one:.1f} s, {args.jobs} processes {many:.1f} s: {one / many:.2f}x"
    )


if __name__ == "__main__":
    main()
