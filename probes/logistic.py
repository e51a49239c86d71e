"""Logistic-regression probe with the SAE-Probes protocol: C chosen on a held-out split, then refit on all rows."""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from probes.base import BinaryProbe
from probes.errors import ProbeInputError
from probes.saved_checks import (
    FLOATS,
    MAX_INT,
    SavedProbeError,
    array,
    boolean,
    fields,
    integer,
    real,
    seed,
    text,
    vector_length,
)

MAX_GRID = 1000


class LogisticRegressionProbe(BinaryProbe):
    """Logistic regression whose C is chosen by validation ROC AUC (Kantamneni, Engels et al. 2025).

    fit holds out min(validation_size * n, max_validation) training rows (stratified, seeded), fits each C
    of the grid on the rest (warm-started from the strongest regularisation up), keeps the C with the best
    validation ROC AUC (ties go to the first C of the grid, as in the SAE-Probes code: by default the
    largest), and refits on all training rows with it. L2 uses lbfgs, L1 liblinear. With standardize=True a
    StandardScaler fitted on the training rows precedes the model; coef_ and intercept_ always act on the raw
    features (the scaler is folded in). Fitting uses one BLAS
    thread: lbfgs's stopping point (and so the chosen C) moved with the thread count; run fits in parallel
    processes instead.
    """

    def __init__(
        self,
        penalty: str = "l2",
        Cs=None,
        validation_size: float = 0.2,
        max_validation: int = 100,
        standardize: bool = False,
        max_iter: int = 1000,
        random_state: int | None = 0,
        class_weight=None,
    ):
        self.penalty = penalty
        self.Cs = Cs
        self.validation_size = validation_size
        self.max_validation = max_validation
        self.standardize = standardize
        self.max_iter = max_iter
        self.random_state = random_state
        self.class_weight = class_weight

    def _pipeline(self, C: float, warm_start: bool) -> Pipeline:
        """An optional scaler followed by scikit-learn's LogisticRegression with this probe's penalty."""
        if self.penalty not in ("l1", "l2"):
            raise ProbeInputError(f"LogisticRegressionProbe: penalty must be 'l1' or 'l2', got {self.penalty!r}")
        model = LogisticRegression(
            C=C,
            l1_ratio=1.0 if self.penalty == "l1" else 0.0,
            solver="liblinear" if self.penalty == "l1" else "lbfgs",
            max_iter=self.max_iter,
            class_weight=self.class_weight,
            random_state=self.random_state,
            warm_start=warm_start,
        )
        return Pipeline([("scale", StandardScaler() if self.standardize else "passthrough"), ("model", model)])

    def fit(self, X, y) -> "LogisticRegressionProbe":
        """Choose C on a validation holdout, then refit on all of (X, y), on one BLAS thread."""
        with threadpool_limits(limits=1, user_api="blas"):
            return self._fit(*self._fit_inputs(X, y))

    def _fit(self, X: np.ndarray, y: np.ndarray) -> "LogisticRegressionProbe":
        self.Cs_ = np.logspace(5, -5, 10) if self.Cs is None else np.atleast_1d(np.asarray(self.Cs, dtype=float))
        if self.Cs_.ndim != 1 or not np.all(self.Cs_ > 0):
            raise ProbeInputError(
                f"LogisticRegressionProbe: Cs must be a 1-D list of positive numbers, got {self.Cs!r}"
            )
        n_validation = min(int(self.validation_size * len(y)), self.max_validation)
        try:
            X_fit, X_val, y_fit, y_val = train_test_split(
                X, y, test_size=n_validation, stratify=y, random_state=self.random_state
            )
        except ValueError as error:
            raise ProbeInputError(
                f"LogisticRegressionProbe: cannot hold out a stratified validation set of {n_validation} "
                f"from {len(y)} training rows: {str(error).splitlines()[0]}"
            ) from error
        path = self._pipeline(C=1.0, warm_start=True)
        auc_by_C = {}
        for C in np.unique(self.Cs_):
            path.set_params(model__C=C).fit(X_fit, y_fit)
            auc_by_C[C] = roc_auc_score(y_val, path.decision_function(X_val))
        self.validation_aucs_ = np.array([auc_by_C[C] for C in self.Cs_])
        self.validation_auc_ = float(self.validation_aucs_.max())
        self.C_ = float(self.Cs_[int(np.argmax(self.validation_aucs_))])
        final = self._pipeline(C=self.C_, warm_start=False).fit(X, y)
        coef, intercept = final["model"].coef_, final["model"].intercept_
        if self.standardize:
            coef = coef / final["scale"].scale_
            intercept = intercept - coef @ final["scale"].mean_
        self.coef_, self.intercept_ = coef, intercept
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logit of the positive class, shape (n,)."""
        X = self._predict_inputs(X)
        return (X @ self.coef_.T.astype(X.dtype, copy=False)).ravel().astype(np.float64) + self.intercept_[0]

    def feature_weights(self) -> np.ndarray:
        """The coefficients on the raw features (the scaler folded in)."""
        check_is_fitted(self)
        return self.coef_.ravel().astype(np.float64)

    def chosen_hyperparameters(self) -> dict[str, float]:
        """The C chosen on the validation holdout and its validation ROC AUC, for a runner to record."""
        check_is_fitted(self)
        return {"C": self.C_, "validation_auc": self.validation_auc_}

    @classmethod
    def _check_params(cls, params: dict) -> None:
        text(params["penalty"], "penalty", ("l1", "l2"))
        Cs = params["Cs"]
        if Cs is not None and (not isinstance(Cs, list) or not 0 < len(Cs) <= MAX_GRID):
            raise SavedProbeError(f"Cs must be null or a list of 1 to {MAX_GRID} numbers")
        for C in Cs or []:
            real(C, "Cs", low=np.finfo(float).tiny)
        real(params["validation_size"], "validation_size", 0, 1)
        integer(params["max_validation"], "max_validation", 0, MAX_INT)
        boolean(params["standardize"], "standardize")
        integer(params["max_iter"], "max_iter", 1, MAX_INT)
        seed(params["random_state"])
        weights = params["class_weight"]
        if isinstance(weights, dict):
            if len(weights) > MAX_GRID or not all(isinstance(label, (bool, int, float, str)) for label in weights):
                raise SavedProbeError("class_weight must map at most 1000 plain labels to weights")
            for label, weight in weights.items():
                if isinstance(label, str):
                    text(label, "class_weight label")
                real(weight, "class_weight", low=0)
        elif weights is not None:
            text(weights, "class_weight", ("balanced",))

    def _fitted_state(self) -> tuple[dict, dict[str, np.ndarray], dict]:
        plain = {**self._common_state(), "validation_auc_": float(self.validation_auc_), "C_": float(self.C_)}
        arrays = {
            "coef_": self.coef_,
            "intercept_": self.intercept_,
            "Cs_": self.Cs_,
            "validation_aucs_": self.validation_aucs_,
        }
        return plain, arrays, {}

    def _restore_fitted(self, plain: dict, arrays: dict[str, np.ndarray], parts: dict) -> None:
        plain = self._restore_common(plain, {"validation_auc_", "C_"}, "logistic-regression")
        fields(parts, "logistic-regression parts", set())
        self.coef_ = array(arrays, "coef_", (1, self.n_features_in_), FLOATS)
        self.intercept_ = array(arrays, "intercept_", (1,), FLOATS)
        grid = vector_length(arrays, "Cs_", MAX_GRID)
        self.Cs_ = array(arrays, "Cs_", (grid,), ("float64",))
        self.validation_aucs_ = array(arrays, "validation_aucs_", (grid,), ("float64",))
        self.validation_auc_ = real(plain["validation_auc_"], "validation_auc_", finite=False)
        self.C_ = real(plain["C_"], "C_", finite=False)
