import numpy as np
import pytest

from featstore.catalog.splits import SplitParams, assign_splits
from featstore.errors import FeatstoreError


def labels_for(n: int, positive_fraction: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < positive_fraction).astype(int)


@pytest.mark.parametrize("n,fraction", [(300, 0.5), (1500, 0.3), (6000, 0.5), (150, 0.6)])
def test_train_is_balanced_and_sized_by_the_protocol(n, fraction):
    labels = labels_for(n, fraction)
    splits = assign_splits("ds", np.arange(n), labels, SplitParams())
    kept = min(n, 5000)
    smaller_class = min(labels.sum(), n - labels.sum()) if n <= 5000 else None
    per_class = min(kept - 100, 1024) // 2
    if smaller_class is not None:
        per_class = min(per_class, smaller_class - 1)
    expected_train = 2 * per_class
    assert (splits == "train").sum() == expected_train
    assert labels[splits == "train"].mean() == 0.5
    assert (splits == "test").sum() == kept - expected_train
    assert (splits == "unused").sum() == n - kept


def test_same_inputs_same_split_and_seed_or_name_changes_it():
    labels = labels_for(2000, 0.4)
    rows = np.arange(2000)
    first = assign_splits("ds", rows, labels, SplitParams(seed=1))
    assert (first == assign_splits("ds", rows, labels, SplitParams(seed=1))).all()
    assert (first != assign_splits("ds", rows, labels, SplitParams(seed=2))).any()
    assert (first != assign_splits("other", rows, labels, SplitParams(seed=1))).any()


def test_split_of_an_example_does_not_depend_on_row_order():
    labels = labels_for(800, 0.5)
    rows = np.arange(800)
    forward = assign_splits("ds", rows, labels, SplitParams())
    permutation = np.random.default_rng(3).permutation(800)
    shuffled = assign_splits("ds", rows[permutation], labels[permutation], SplitParams())
    assert (shuffled == forward[permutation]).all()


def test_split_is_pinned_across_machines():
    """The hash order is part of the format: these rows are train for seed 42 on every machine."""
    labels = np.array([0, 1] * 60)
    splits = assign_splits("87_glue_cola", np.arange(120), labels, SplitParams(min_test=100))
    assert np.flatnonzero(splits == "train").tolist() == PINNED_TRAIN_ROWS


PINNED_TRAIN_ROWS = [6, 7, 9, 13, 19, 29, 32, 35, 41, 45, 56, 62, 66, 72, 73, 82, 90, 100, 105, 118]


def test_parameters_are_options():
    labels = labels_for(1000, 0.5)
    splits = assign_splits("ds", np.arange(1000), labels, SplitParams(max_examples=500, max_train=64, min_test=10))
    assert (splits == "train").sum() == 64
    assert (splits == "test").sum() == 436
    assert (splits == "unused").sum() == 500


def test_too_few_examples_is_refused():
    with pytest.raises(FeatstoreError, match="too few examples"):
        assign_splits("tiny", np.arange(50), labels_for(50, 0.5), SplitParams())
    with pytest.raises(FeatstoreError, match="smaller class"):
        assign_splits("one-class", np.arange(500), np.zeros(500, int), SplitParams())
