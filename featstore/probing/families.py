"""The probe families `featstore probe --probe` accepts: one per preset of the registry in probes.families, so
adding a family touches that registry and its estimator module only.

Each names the input it is fitted on: `matrix` (an aggregation of the attention rows, or the residual, as an
examples x features matrix), `rows` (whole attention rows, read lazily in batches) or `stack` (one matrix per base
setting, for the meta probe). Probes are imported only when made, so the command line starts without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from probes.families import FAMILIES as REGISTRY

SHUFFLED_LABELS = "shuffled-labels"
CONTROLS = (SHUFFLED_LABELS,)  # `featstore probe --control`: the same fit on labels that carry no signal


@dataclass(frozen=True)
class ProbeFamily:
    """A `--probe` choice: the input it takes, how to make one for a seed, and a line for --help."""

    input: str
    make: Callable[[int], object]
    summary: str


FAMILIES: dict[str, ProbeFamily] = {
    name: ProbeFamily(family.input, partial(family.make, name), preset.summary)
    for family in REGISTRY.values()
    for name, preset in family.presets.items()
}
