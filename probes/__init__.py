"""Model-agnostic probes over (examples x features) matrices, following scikit-learn conventions."""

from probes.covariance import shrunk_covariance_solve
from probes.errors import ProbeInputError
from probes.logistic import LogisticRegressionProbe
from probes.mass_mean import MassMeanProbe
from probes.metrics import binary_scores

__all__ = ["LogisticRegressionProbe", "MassMeanProbe", "ProbeInputError", "binary_scores", "shrunk_covariance_solve"]
