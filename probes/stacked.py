"""A meta probe: logistic regression over the scores of several base probes, each fed its own feature matrix.

Fitting is cross-fitted on the training rows only: each base probe is fitted on k-1 folds and scores the
held-out fold, so the meta model learns from out-of-fold scores; then every base probe is refitted on all
training rows, and those refits score new data. The data to score is never seen while fitting.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from probes.base import BinaryProbe, as_numpy
from probes.errors import ProbeInputError
from probes.logistic import LogisticRegressionProbe
from probes.saved_checks import MAX_PARTS, SavedProbeError, fields, integer, seed


class StackedProbe(BinaryProbe):
    """X is a list of feature matrices, one per base probe (same rows in the same order)."""

    def __init__(self, base_probes: list | None = None, final_probe=None, n_folds: int = 5, random_state: int = 0):
        self.base_probes = base_probes
        self.final_probe = final_probe
        self.n_folds = n_folds
        self.random_state = random_state

    def fit(self, X: list, y) -> StackedProbe:
        """Cross-fit the base probes, fit the final probe on their out-of-fold scores, refit the bases on all rows."""
        matrices = self._matrices(X)
        y = np.asarray(as_numpy(y)).ravel()
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ProbeInputError(f"StackedProbe.fit: y needs exactly two classes, got {self.classes_.tolist()}")
        rarest = int(np.unique(y, return_counts=True)[1].min())
        if rarest < self.n_folds:
            raise ProbeInputError(
                f"StackedProbe: the rarer class has {rarest} training rows, fewer than the "
                f"{self.n_folds} folds of its cross-fitting"
            )
        folds = StratifiedKFold(self.n_folds, shuffle=True, random_state=self.random_state)
        out_of_fold = np.zeros((len(y), len(matrices)))
        for fit_rows, held_out in folds.split(np.zeros(len(y)), y):
            for j, (base, X_j) in enumerate(zip(self._bases(len(matrices)), matrices, strict=True)):
                out_of_fold[held_out, j] = clone(base).fit(X_j[fit_rows], y[fit_rows]).decision_function(X_j[held_out])
        final = self.final_probe or LogisticRegressionProbe(standardize=True, random_state=self.random_state)
        self.final_ = clone(final)
        self.final_.fit(out_of_fold, y)
        self.bases_ = [clone(base).fit(X_j, y) for base, X_j in zip(self._bases(len(matrices)), matrices, strict=True)]
        self.n_features_in_ = sum(X_j.shape[1] for X_j in matrices)
        return self

    def base_scores(self, X: list) -> np.ndarray:
        """(rows, base probes): each refitted base probe's decision scores."""
        check_is_fitted(self, "bases_")
        matrices = self._matrices(X)
        if len(matrices) != len(self.bases_):
            raise ProbeInputError(f"StackedProbe: fitted with {len(self.bases_)} matrices, got {len(matrices)}")
        return np.column_stack([base.decision_function(X_j) for base, X_j in zip(self.bases_, matrices, strict=True)])

    def decision_function(self, X: list) -> np.ndarray:
        """The final probe's logit on the base probes' scores."""
        scores = self.base_scores(X)
        return self.final_.decision_function(scores)

    def chosen_hyperparameters(self) -> dict:
        """The final probe's C and validation AUC, and its weight on each base probe's score."""
        check_is_fitted(self, "final_")
        return {**self.final_.chosen_hyperparameters(), "base_weights": self.final_.feature_weights().tolist()}

    def _bases(self, n: int) -> list:
        bases = self.base_probes or [LogisticRegressionProbe(random_state=self.random_state)] * n
        if len(bases) != n:
            raise ProbeInputError(f"StackedProbe: {len(bases)} base probes for {n} matrices")
        return bases

    @staticmethod
    def _matrices(X) -> list[np.ndarray]:
        if not isinstance(X, (list, tuple)) or not X:
            raise ProbeInputError("StackedProbe takes a non-empty list of feature matrices, one per base probe")
        matrices = [np.asarray(as_numpy(X_j)) for X_j in X]
        if len({len(X_j) for X_j in matrices}) != 1:
            raise ProbeInputError("StackedProbe: the feature matrices must have the same rows")
        return matrices

    @classmethod
    def _check_params(cls, params: dict) -> None:
        bases, final = params["base_probes"], params["final_probe"]
        if bases is not None and not (
            isinstance(bases, list)
            and 0 < len(bases) <= MAX_PARTS
            and all(isinstance(base, BinaryProbe) for base in bases)
        ):
            raise SavedProbeError(f"base_probes must be null or a list of 1 to {MAX_PARTS} probes")
        if final is not None and not isinstance(final, BinaryProbe):
            raise SavedProbeError("final_probe must be null or a probe")
        integer(params["n_folds"], "n_folds", 2, 10**6)
        seed(params["random_state"])

    def _fitted_state(self) -> tuple[dict, dict[str, np.ndarray], dict]:
        return self._common_state(), {}, {"final_": self.final_, "bases_": self.bases_}

    def _restore_fitted(self, plain: dict, arrays: dict[str, np.ndarray], parts: dict) -> None:
        self._restore_common(plain, set(), "stacked")
        parts = fields(parts, "stacked parts", {"final_", "bases_"})
        final, bases = parts["final_"], parts["bases_"]
        if not (
            isinstance(bases, list)
            and 0 < len(bases) <= MAX_PARTS
            and all(isinstance(base, BinaryProbe) for base in bases)
        ):
            raise SavedProbeError(f"bases_ must be a list of 1 to {MAX_PARTS} fitted probes")
        if not isinstance(final, BinaryProbe) or final.n_features_in_ != len(bases):
            raise SavedProbeError(f"final_ must be a fitted probe of {len(bases)} features (one per base probe)")
        self.final_, self.bases_ = final, bases
