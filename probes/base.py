"""The binary-probe protocol, scikit-learn's classifier contract, and what every probe shares: input checks,
labels, predict, predict_proba and score."""

from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from probes.errors import ProbeInputError
from probes.saved_checks import MAX_INT, classes, feature_names, fields, integer, saved_classes

COMMON_FITTED = {"classes_", "n_features_in_"}


def as_numpy(array: Any) -> Any:
    """Return a torch tensor as a numpy array (bfloat16 widened to float32); anything else unchanged."""
    if type(array).__module__.split(".")[0] == "torch":
        import torch

        tensor = array.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    return array


class BinaryProbe(ClassifierMixin, BaseEstimator):
    """Base of the binary probes: X is (examples, features) unless the family says otherwise, classes_[1] is the
    positive class.

    A family implements fit and decision_function; predict, predict_proba and score (scikit-learn's mean accuracy)
    follow from them. `probes.metrics.probe_metrics` gives the ROC AUC and the other metrics a run records, from
    the same decision scores.
    The constructor stores its arguments unchanged, so get_params, set_params and clone work.
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X, y) -> "BinaryProbe":
        """Fit on (X, y), y of exactly two classes; returns the probe."""
        raise NotImplementedError

    def decision_function(self, X) -> np.ndarray:
        """Score of the positive class, shape (n,); positive means classes_[1]."""
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        """Probabilities of classes_[0] and classes_[1], shape (n, 2)."""
        positive = expit(self._log_odds(self.decision_function(X)))
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X) -> np.ndarray:
        """Class labels: classes_[1] where decision_function is positive."""
        positive = self.decision_function(X) > 0  # first: an unfitted probe raises NotFittedError there
        return self.classes_[positive.astype(np.int64)]

    def _log_odds(self, decision: np.ndarray) -> np.ndarray:
        """Log-odds of the positive class given decision_function values."""
        return decision

    def chosen_hyperparameters(self) -> dict:
        """What the fit chose (a regularisation, an epoch...) as plain values, for a runner to record; none here."""
        return {}

    def feature_weights(self) -> np.ndarray | None:
        """Per-feature weights w with decision_function(X) = X @ w + constant, shape (features,); None for a probe
        that is not linear in its features (the default)."""
        return None

    def standardised_weights(self, X) -> np.ndarray | None:
        """What the fitted probe puts on each of its n_features_in_ features, comparable across features: by default
        feature_weights times the features' standard deviations in X (its training data); None without weights."""
        weights = self.feature_weights()
        return None if weights is None else weights * np.asarray(as_numpy(X)).std(axis=0, dtype=np.float64)

    def _fit_inputs(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """Validate training data, set classes_, and return X and y encoded as 0/1."""
        try:
            X, y = validate_data(self, as_numpy(X), as_numpy(y), dtype=(np.float64, np.float32))
            check_classification_targets(y)
        except ValueError as error:
            raise ProbeInputError(f"{type(self).__name__}.fit: {str(error).splitlines()[0]}") from error
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ProbeInputError(
                f"{type(self).__name__}.fit: y needs exactly two classes, got {self.classes_.tolist()}"
            )
        return X, (y == self.classes_[1]).astype(np.int64)

    def _predict_inputs(self, X) -> np.ndarray:
        """Validate data to score against the fitted number of features."""
        check_is_fitted(self)
        try:
            return validate_data(self, as_numpy(X), reset=False, dtype=(np.float64, np.float32))
        except ValueError as error:
            raise ProbeInputError(f"{type(self).__name__}: {str(error).splitlines()[0]}") from error

    # Saving (see probes.saved): each family declares what it saves and how it is rebuilt from checked values.

    @classmethod
    def _check_params(cls, params: dict) -> None:
        """Check constructor parameters read from a probe file (types, ranges) before the probe is built."""
        raise NotImplementedError

    def _fitted_state(self) -> tuple[dict, dict[str, np.ndarray], dict]:
        """What the fitted probe is rebuilt from: plain values (JSON), arrays, and fitted sub-probes by name."""
        raise NotImplementedError

    def _restore_fitted(self, plain: dict, arrays: dict[str, np.ndarray], parts: dict) -> None:
        """Set the fitted attributes from a probe file's values, each checked first (SavedProbeError)."""
        raise NotImplementedError

    def _common_state(self) -> dict:
        """The fitted values every probe has: its classes, its number of features (and their names, if any)."""
        names = getattr(self, "feature_names_in_", None)
        return {
            "classes_": saved_classes(self.classes_),
            "n_features_in_": int(self.n_features_in_),
            **({"feature_names_in_": [str(name) for name in names]} if names is not None else {}),
        }

    def _restore_common(self, plain: dict, own: set[str], name: str) -> dict:
        """Check that `plain` holds exactly the common values and `own`, and set the common ones."""
        plain = fields(plain, f"{name} fitted values", COMMON_FITTED | own, frozenset({"feature_names_in_"}))
        self.classes_ = classes(plain["classes_"])
        self.n_features_in_ = integer(plain["n_features_in_"], "n_features_in_", 1, MAX_INT)
        names = feature_names(plain.get("feature_names_in_"), self.n_features_in_)
        if names is not None:
            self.feature_names_in_ = names
        return plain
