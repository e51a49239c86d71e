"""Model-agnostic probes over (examples x features) matrices, following scikit-learn's estimator contract.

Each public name is imported from its module on first use, so reading the family registry (probes.families, as
featstore's command line does when it starts) loads neither scikit-learn nor torch.
"""

from importlib import import_module

_MODULES = {
    "AttentionRowProbe": "probes.attention_row",
    "AttentionRows": "probes.rows",
    "LogisticRegressionProbe": "probes.logistic",
    "MassMeanProbe": "probes.mass_mean",
    "ProbeInputError": "probes.errors",
    "SavedProbeError": "probes.saved_checks",
    "StackedProbe": "probes.stacked",
    "binary_scores": "probes.metrics",
    "load_probe": "probes.saved",
    "probe_bytes": "probes.saved",
    "probe_metrics": "probes.metrics",
    "save_probe": "probes.saved",
    "shrunk_covariance_solve": "probes.covariance",
}
__all__ = sorted(_MODULES)


def __getattr__(name: str):
    """The public name `name`, imported from its module."""
    if name not in _MODULES:
        raise AttributeError(f"module 'probes' has no attribute {name!r}")
    return getattr(import_module(_MODULES[name]), name)
