"""Mass-mean probe (Marks & Tegmark 2023), optionally tilted by the shrunk within-class covariance (LDA)."""

import numbers

import numpy as np
from sklearn.utils.validation import check_is_fitted

from probes.base import BinaryProbe
from probes.covariance import shrunk_covariance_solve
from probes.errors import ProbeInputError
from probes.saved_checks import array, fields, real, seed, text


class MassMeanProbe(BinaryProbe):
    """Projection on mean(positives) - mean(negatives), or on Sigma^-1 of it with tilt="lda".

    Sigma is the pooled within-class covariance shrunk towards a scaled identity (Ledoit-Wolf's
    coefficient with shrinkage="auto"); it is never formed when features outnumber examples.
    Projections are taken on data centred by the training mean. The threshold is the midpoint of the two
    classes' mean training projections, and predict_proba is the 1-D Gaussian model of the training
    projections with a pooled variance and equal priors (that is, LDA on the projection), so
    predict and predict_proba agree. With features far outnumbering examples the training classes
    separate almost perfectly and those probabilities are overconfident; rank with decision_function.
    random_state is accepted for interface parity with LogisticRegressionProbe: the fit is deterministic.
    """

    def __init__(self, tilt: str | None = None, shrinkage="auto", random_state: int | None = 0):
        self.tilt = tilt
        self.shrinkage = shrinkage
        self.random_state = random_state

    def _tilted(self, X: np.ndarray, y: np.ndarray, class_means: np.ndarray) -> tuple[np.ndarray, float]:
        """Sigma^-1 (mu+ - mu-) and the shrinkage used, Sigma from the class-centred rows of X."""
        valid_number = (
            isinstance(self.shrinkage, numbers.Real)
            and not isinstance(self.shrinkage, bool)
            and 0 <= self.shrinkage <= 1
        )
        if self.shrinkage != "auto" and not valid_number:
            raise ProbeInputError(
                f"MassMeanProbe: shrinkage must be 'auto' or a number in [0, 1], got {self.shrinkage!r}"
            )
        class_centred = X - class_means.astype(X.dtype)[y]
        shrinkage = None if self.shrinkage == "auto" else self.shrinkage
        return shrunk_covariance_solve(class_centred, class_means[1] - class_means[0], shrinkage)

    def fit(self, X, y) -> "MassMeanProbe":
        """Fit the direction, the threshold and the probability scale on (X, y)."""
        X, y = self._fit_inputs(X, y)
        class_means = np.stack([X[y == label].mean(axis=0, dtype=np.float64) for label in (0, 1)])
        if self.tilt is None:
            self.direction_, self.shrinkage_ = class_means[1] - class_means[0], None
        elif self.tilt == "lda":
            self.direction_, self.shrinkage_ = self._tilted(X, y, class_means)
        else:
            raise ProbeInputError(f"MassMeanProbe: tilt must be None or 'lda', got {self.tilt!r}")
        self.mean_ = X.mean(axis=0, dtype=np.float64)
        projection = self._project(X)
        projected_means = np.array([projection[y == label].mean() for label in (0, 1)])
        self.threshold_ = float(projected_means.mean())
        pooled_variance = np.mean((projection - projected_means[y]) ** 2)
        self.logit_scale_ = float(np.diff(projected_means)[0] / max(pooled_variance, np.finfo(float).tiny))
        return self

    def _project(self, X: np.ndarray) -> np.ndarray:
        """(X - mean_) @ direction_, without a centred copy of X."""
        return (X @ self.direction_.astype(X.dtype)).astype(np.float64) - self.mean_ @ self.direction_

    def decision_function(self, X) -> np.ndarray:
        """Projection on the direction minus the threshold, shape (n,); positive means classes_[1]."""
        return self._project(self._predict_inputs(X)) - self.threshold_

    def feature_weights(self) -> np.ndarray:
        """The (tilted) mass-mean direction."""
        check_is_fitted(self)
        return np.asarray(self.direction_, dtype=np.float64)

    def _log_odds(self, decision: np.ndarray) -> np.ndarray:
        return self.logit_scale_ * decision

    def chosen_hyperparameters(self) -> dict[str, float | None]:
        """The covariance shrinkage used (None without tilt), for a runner to record."""
        check_is_fitted(self)
        return {"shrinkage": self.shrinkage_}

    @classmethod
    def _check_params(cls, params: dict) -> None:
        text(params["tilt"], "tilt", ("lda",), optional=True)
        if params["shrinkage"] != "auto":
            real(params["shrinkage"], "shrinkage", 0, 1)
        seed(params["random_state"])

    def _fitted_state(self) -> tuple[dict, dict[str, np.ndarray], dict]:
        plain = {
            **self._common_state(),
            "shrinkage_": self.shrinkage_,
            "threshold_": self.threshold_,
            "logit_scale_": self.logit_scale_,
        }
        return plain, {"direction_": self.direction_, "mean_": self.mean_}, {}

    def _restore_fitted(self, plain: dict, arrays: dict[str, np.ndarray], parts: dict) -> None:
        plain = self._restore_common(plain, {"shrinkage_", "threshold_", "logit_scale_"}, "mass-mean")
        fields(parts, "mass-mean parts", set())
        self.direction_ = array(arrays, "direction_", (self.n_features_in_,), ("float64",))
        self.mean_ = array(arrays, "mean_", (self.n_features_in_,), ("float64",))
        self.shrinkage_ = real(plain["shrinkage_"], "shrinkage_", 0, 1, optional=True)
        self.threshold_ = real(plain["threshold_"], "threshold_", finite=False)
        self.logit_scale_ = real(plain["logit_scale_"], "logit_scale_", finite=False)
