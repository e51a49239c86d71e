"""The probe families `featstore probe --probe` accepts, in one registry: adding a family touches this file.

Each family names the input it is fitted on: `matrix` (an aggregation of the attention rows, or the
residual, as an examples x features matrix), `rows` (whole attention rows, read lazily in batches) or
`stack` (one matrix per base setting, for the meta probe). Probes are imported only when made, so the
command line starts without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SHUFFLED_LABELS = "shuffled-labels"
CONTROLS = (SHUFFLED_LABELS,)  # `featstore probe --control`: the same fit on labels that carry no signal


@dataclass(frozen=True)
class ProbeFamily:
    """A probe family: the input it takes, how to make one for a seed, and a line for --help."""

    input: str
    make: Callable[[int], object]
    summary: str


def _logreg(seed: int):
    from probes import LogisticRegressionProbe

    return LogisticRegressionProbe(random_state=seed)


def _mass_mean(seed: int):
    from probes import MassMeanProbe

    return MassMeanProbe(random_state=seed)


def _mass_mean_lda(seed: int):
    from probes import MassMeanProbe

    return MassMeanProbe(tilt="lda", random_state=seed)


def _attention_row(seed: int):
    from probes import AttentionRowProbe

    return AttentionRowProbe(random_state=seed)


def _meta(seed: int):
    from probes import StackedProbe

    return StackedProbe(random_state=seed)


FAMILIES: dict[str, ProbeFamily] = {
    "logreg": ProbeFamily("matrix", _logreg, "logistic regression, C chosen on a validation holdout (SAE-Probes)"),
    "mass-mean": ProbeFamily("matrix", _mass_mean, "difference of class means"),
    "mass-mean-lda": ProbeFamily("matrix", _mass_mean_lda, "mass-mean tilted by the shrunk covariance (LDA)"),
    "attention-row": ProbeFamily("rows", _attention_row, "learned weighting of whole attention rows (Lightning)"),
    "meta": ProbeFamily("stack", _meta, "logistic regression over cross-fitted scores of the --aggregation "
                                        "(x --each-layer) settings"),
}
