"""Model-agnostic probes over (examples x features) matrices, following scikit-learn conventions."""

from probes.attention_row import AttentionRowProbe
from probes.covariance import shrunk_covariance_solve
from probes.errors import ProbeInputError
from probes.logistic import LogisticRegressionProbe
from probes.mass_mean import MassMeanProbe
from probes.metrics import binary_scores
from probes.rows import AttentionRows
from probes.saved import load_probe, probe_bytes, save_probe
from probes.saved_checks import SavedProbeError
from probes.stacked import StackedProbe

__all__ = ["AttentionRowProbe", "AttentionRows", "LogisticRegressionProbe", "MassMeanProbe", "ProbeInputError",
           "SavedProbeError", "StackedProbe", "binary_scores", "load_probe", "probe_bytes", "save_probe",
           "shrunk_covariance_solve"]
