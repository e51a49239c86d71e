"""What a fitted probe uses, per attention head: the layer x head map of the report.

A head's weight is the L2 norm, over that head's features, of the probe's weights on standardised
features (for a linear probe, its weight times the feature's standard deviation on the training split),
so heads whose features vary on different scales compare fairly.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

_HEAD_FEATURE = re.compile(r"(?:^|\.)L(?P<layer>\d+)\.H(?P<head>\d+)(?:\.|$)")


def head_weights(standardised: np.ndarray, names: list[str]) -> pd.DataFrame:
    """(layer, head, weight) rows from per-feature weights on standardised features, for the features named
    `L<layer>.H<head>...`; no rows when none is."""
    heads = [_HEAD_FEATURE.search(name) for name in names]
    keep = np.array([match is not None for match in heads], dtype=bool)
    frame = pd.DataFrame(
        {
            "layer": [int(m["layer"]) for m in heads if m is not None],
            "head": [int(m["head"]) for m in heads if m is not None],
            "squared": np.asarray(standardised, dtype=np.float64)[keep] ** 2,
        }
    ).astype({"layer": np.int32, "head": np.int32})
    summed = frame.groupby(["layer", "head"], as_index=False)["squared"].sum()
    return summed.assign(weight=np.sqrt(summed.pop("squared")))
