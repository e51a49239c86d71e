"""What one probe fit is: a dataset's features under a model, a layer set, an aggregation (or the base settings
a meta probe stacks) and a probe family, with its seed, baseline flag and control.

The fields are typed; the strings stored in `probe_results` (`layers` as `0,1,2`, `aggregation` as `first` or
`stack[L0,1 first;L0,1 entropy]`) and the result id hashed from them come from the `*_label` properties, used
where rows are written to the catalog and where a setting is named to the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from featstore.digests import json_digest

LAST_TOKEN = "last-token"  # the residual's aggregation
LENGTH_FEATURE = "length"  # the length-only control's feature
LENGTH_AGGREGATION = "log-seq_len"
ROWS_AGGREGATION = "rows"  # whole attention rows, read lazily (the attention-row probe)
HARD_THRESHOLD = 0.8  # a dataset is hard when its baseline's test AUC is below this (SAE-Probes' hard subset)


@dataclass(frozen=True)
class BaseSetting:
    """One setting whose cross-fitted scores a meta probe stacks: a layer set and a token aggregation."""

    layers: tuple[int, ...]
    aggregation: str

    @property
    def label(self) -> str:
        """`L0,1 first`, as it appears inside a stack's label."""
        return f"{short_layers(self.layers)} {self.aggregation}"


@dataclass(frozen=True)
class Stack:
    """The base settings a meta probe stacks, one feature matrix each, in order."""

    bases: tuple[BaseSetting, ...]

    @property
    def label(self) -> str:
        """As stored in the `aggregation` column: `stack[L0,1 first;L0,1 entropy]`."""
        return f"stack[{';'.join(base.label for base in self.bases)}]"


@dataclass(frozen=True)
class ProbeSpec:
    """One combination to fit: a dataset's features under a model, a layer set, an aggregation and a probe."""

    dataset: str
    model: str
    feature: str
    layers: tuple[int, ...]
    aggregation: str | Stack  # a canonical aggregation name (`first`, `bins:4`, `last-token`, `rows`) or a stack
    probe: str
    seed: int = 0
    baseline: bool = False
    control: str = ""

    @property
    def layers_label(self) -> str:
        """The `layers` column: `0,1,2`, empty for the length control."""
        return ",".join(map(str, self.layers))

    @property
    def aggregation_label(self) -> str:
        """The `aggregation` column: the aggregation's name, or the stack's label."""
        return self.aggregation.label if isinstance(self.aggregation, Stack) else self.aggregation

    @property
    def result_id(self) -> str:
        """A stable id of the combination, hashed from its catalog columns."""
        fields = [
            self.dataset,
            self.model,
            self.feature,
            self.layers_label,
            "all",
            self.aggregation_label,
            self.probe,
            self.seed,
            self.baseline,
        ] + ([self.control] if self.control else [])  # older ids unchanged
        return json_digest(fields, 20)


def short_layers(layers: Sequence[int]) -> str:
    """`L0-23` for a contiguous run, `L5` for one layer, else the list; empty for no layers (length control)."""
    numbers = list(layers)
    if not numbers:
        return ""
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"L{numbers[0]}-{numbers[-1]}"
    return "L" + ",".join(map(str, numbers))


def parse_layers_label(label: str) -> tuple[int, ...]:
    """The layers of a `layers` column value (`0,1,2`; empty for none)."""
    return tuple(int(x) for x in label.split(",")) if label else ()
