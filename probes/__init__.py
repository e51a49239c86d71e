"""Model-agnostic probes over (examples x features) matrices, following scikit-learn conventions."""

from probes.attention_row import AttentionRowProbe
from probes.covariance import shrunk_covariance_solve
from probes.errors import ProbeInputError
from probes.logistic import LogisticRegressionProbe
from probes.mass_mean import MassMeanProbe
from probes.metrics import binary_scores
from probes.rows import AttentionRows
from probes.stacked import StackedProbe

__all__ = ["AttentionRowProbe", "AttentionRows", "LogisticRegressionProbe", "MassMeanProbe", "ProbeInputError",
           "StackedProbe", "binary_scores", "shrunk_covariance_solve"]
