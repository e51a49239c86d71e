"""The one exception the probe library raises for bad input."""


class ProbeInputError(ValueError):
    """Input a probe cannot use (NaN/inf, one class, wrong shape, bad hyperparameter), explained in one line."""
