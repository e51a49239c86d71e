"""Deterministic, class-balanced train/test splits (the SAE-Probes protocol by default).

Examples are ordered by a SHA-256 of (seed, dataset, row), so the same inputs give the same
split on any machine and with any library version.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np

from featstore.errors import FeatstoreError

TRAIN, TEST, UNUSED = "train", "test", "unused"
FEATURE_SPLITS = (TRAIN, TEST)  # the splits a build extracts


@dataclass(frozen=True)
class SplitParams:
    """At most `max_examples` per dataset; train = min(n - min_test, max_train), half positive; test = the rest."""

    seed: int = 42
    max_examples: int = 5000
    max_train: int = 1024
    min_test: int = 100

    def as_dict(self) -> dict:
        return asdict(self)


def hash_order(dataset: str, rows: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of positions 0..len(rows)-1 that depends only on the dataset name and row numbers."""
    keys = [hashlib.sha256(f"{seed}:{dataset}:{row}".encode()).digest()[:8] for row in rows.tolist()]
    return np.argsort(np.array([int.from_bytes(k, "big") for k in keys], dtype=np.uint64), kind="stable")


def assign_splits(dataset: str, rows: np.ndarray, labels: np.ndarray, params: SplitParams) -> np.ndarray:
    """`train`, `test` or `unused` for each example; train is exactly class-balanced."""
    order = hash_order(dataset, rows, params.seed)
    splits = np.full(len(rows), UNUSED, dtype=object)
    kept = order[: params.max_examples]
    n = len(kept)
    n_train = min(n - params.min_test, params.max_train)
    kept_labels = labels[kept]
    n_min = int(min((kept_labels == 1).sum(), (kept_labels == 0).sum()))
    per_class = min(n_train // 2, n_min - 1)
    if per_class < 1:
        raise FeatstoreError(
            f"{dataset}: too few examples to split ({n} kept, {n_min} in the smaller class; "
            f"at least {params.min_test + 2} with 2 of each class are needed)"
        )
    splits[kept] = TEST
    for label in (0, 1):
        in_class = kept[kept_labels == label]
        splits[in_class[:per_class]] = TRAIN
    return splits
