"""The probe families, in one registry: adding a family is its estimator module and one entry here.

An entry names the family's estimator class (imported when first used, so reading the registry needs neither
scikit-learn nor torch), the input it is fitted on, and its presets: the named settings a command line offers
(`featstore probe --probe NAME`). The key is the family's name in probe files (probes.saved); every estimator
takes `random_state`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from probes.base import BinaryProbe

MATRIX = "matrix"  # an (examples x features) matrix
ROWS = "rows"  # whole attention rows (probes.rows.AttentionRows), read lazily in batches
STACK = "stack"  # a list of matrices, one per base setting (the meta probe)


@dataclass(frozen=True)
class Preset:
    """A named setting of a family: a line for --help and the constructor parameters it sets."""

    summary: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """A probe family: its estimator class (`module`.`class_name`), its input (MATRIX, ROWS or STACK) and its
    presets by name."""

    module: str
    class_name: str
    input: str
    presets: dict[str, Preset]

    def estimator(self) -> type[BinaryProbe]:
        """The estimator class, its module imported on first use."""
        return getattr(importlib.import_module(self.module), self.class_name)

    def make(self, preset: str, seed: int) -> BinaryProbe:
        """An unfitted probe of one of the presets, seeded with `seed`."""
        return self.estimator()(random_state=seed, **self.presets[preset].params)


FAMILIES: dict[str, Family] = {
    "logistic-regression": Family(
        "probes.logistic",
        "LogisticRegressionProbe",
        MATRIX,
        {
            "logreg": Preset("logistic regression, C chosen on a validation holdout (SAE-Probes)"),
        },
    ),
    "mass-mean": Family(
        "probes.mass_mean",
        "MassMeanProbe",
        MATRIX,
        {
            "mass-mean": Preset("difference of class means"),
            "mass-mean-lda": Preset("mass-mean tilted by the shrunk covariance (LDA)", {"tilt": "lda"}),
        },
    ),
    "attention-row": Family(
        "probes.attention_row",
        "AttentionRowProbe",
        ROWS,
        {
            "attention-row": Preset("learned weighting of whole attention rows (Lightning)"),
        },
    ),
    "stacked": Family(
        "probes.stacked",
        "StackedProbe",
        STACK,
        {
            "meta": Preset(
                "logistic regression over cross-fitted scores of the --aggregation (x --each-layer) settings"
            ),
        },
    ),
}


def family_name(probe: object) -> str | None:
    """The registry name of a probe's family, None for a class outside the registry; imports nothing."""
    where = (type(probe).__module__, type(probe).__qualname__)
    return next((name for name, family in FAMILIES.items() if (family.module, family.class_name) == where), None)
