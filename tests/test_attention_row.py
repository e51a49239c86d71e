"""The learned attention-row probe and the stacked meta probe, on planted signals that fixed aggregations miss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

from probes import (
    AttentionRowProbe,
    AttentionRows,
    LogisticRegressionProbe,
    ProbeInputError,
    StackedProbe,
    probe_metrics,
)

FAST = dict(max_epochs=30, patience=8)


def planted(kind: str, n: int, seed: int, layers: int = 2, heads: int = 3, width: int = 64):
    """Random attention rows with one planted signal in layer 1, head 2 (see the tests)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    lengths = rng.integers(24, width + 1, n)
    attn = np.zeros((n, layers, heads, width), np.float32)
    tokens = rng.integers(1, 60, (n, width))
    for i, length in enumerate(lengths):
        logits = rng.normal(size=(layers, heads, length))
        if kind == "token":  # head 1.2 looks at one token; its id (77 or 78) is the label
            position = rng.integers(1, length)
            tokens[i, position] = 77 if y[i] else 78
            logits[1, 2, position] += 3.0
        else:  # mass in a window around the middle, or in the two windows beside it (straddling bin edges)
            relative = (np.arange(length) + 0.5) / length
            inner = (relative > 0.45) & (relative < 0.55)
            outer = ((relative > 0.39) & (relative < 0.45)) | ((relative > 0.55) & (relative < 0.61))
            logits[1, 2, inner if y[i] else outer] += 4.0
        weights = np.exp(logits)
        attn[i, :, :, :length] = weights / weights.sum(-1, keepdims=True)
        tokens[i, length:] = 0
    return AttentionRows(attn, lengths, tokens), y


def fixed_aggregations(rows: AttentionRows, n_bins: int = 8) -> dict[str, np.ndarray]:
    """bins:8, first and entropy by plain loops (the definitions of featstore.views.aggregations)."""
    attn, lengths = rows.attn.astype(np.float64), rows.lengths
    n = len(lengths)
    bins = np.zeros(attn.shape[:3] + (n_bins,))
    entropy = np.zeros(attn.shape[:3])
    for i, length in enumerate(lengths):
        row = attn[i, :, :, :length]
        for b in range(n_bins):
            members = (np.arange(length) * n_bins) // length == b
            bins[i, :, :, b] = row[..., members].mean(-1)
        entropy[i] = -(row * np.log(np.where(row > 0, row, 1))).sum(-1)
    return {"bins:8": bins.reshape(n, -1), "first": attn[..., 0].reshape(n, -1), "entropy": entropy.reshape(n, -1)}


@pytest.mark.parametrize("kind", ["token", "window"])
def test_learns_planted_signals_that_fixed_aggregations_miss(kind):
    train, y_train = planted(kind, 600, seed=0)
    test, y_test = planted(kind, 400, seed=1)
    learned = AttentionRowProbe(**FAST).fit(train, y_train)
    assert probe_metrics(learned, test, y_test)["roc_auc"] >= 0.95
    fixed_train, fixed_test = fixed_aggregations(train), fixed_aggregations(test)
    for name in fixed_train:
        baseline = LogisticRegressionProbe().fit(fixed_train[name], y_train)
        assert probe_metrics(baseline, fixed_test[name], y_test)["roc_auc"] <= 0.70, name
    assert learned.head_importance().shape == (2, 3)
    assert np.unravel_index(learned.head_importance().argmax(), (2, 3)) == (1, 2)
    if kind == "window":  # the learned weighting of head 1.2 peaks inside the window, not on its flanks
        curve = learned.position_weights(n_points=101, length=64)[1, 2]
        assert curve[50] > max(curve[42], curve[58])


@pytest.fixture(scope="module")
def fitted():
    rows, y = planted("token", 300, seed=2)
    return AttentionRowProbe(max_epochs=5, patience=5).fit(rows, y), rows, y


def test_padding_never_changes_a_prediction(fitted):
    probe, rows, _ = fitted
    garbage = rows.attn.copy()
    tokens = rows.tokens.copy()
    for i, length in enumerate(rows.lengths):
        garbage[i, :, :, length:] = 123.0
        tokens[i, length:] = 77
    np.testing.assert_array_equal(
        probe.decision_function(AttentionRows(garbage, rows.lengths, tokens)), probe.decision_function(rows)
    )


def test_same_seed_same_weights_and_save_load_same_predictions(fitted, tmp_path):
    from probes import load_probe, save_probe

    probe, rows, y = fitted
    again = clone(probe).fit(rows, y)
    assert probe.state_.keys() == again.state_.keys() and {key.split(".")[0] for key in probe.state_} == {"0", "1", "2"}
    for key, value in probe.state_.items():
        assert torch.equal(value, again.state_[key]), key
    other_seed = clone(probe).set_params(random_state=1).fit(rows, y)
    assert not torch.equal(probe.state_["0.readout.weight"], other_seed.state_["0.readout.weight"])
    save_probe(probe, tmp_path / "probe.safetensors")
    np.testing.assert_array_equal(
        load_probe(tmp_path / "probe.safetensors").decision_function(rows), probe.decision_function(rows)
    )
    assert (
        probe.chosen_hyperparameters()["best_epoch"] < 5 and 0 <= probe.chosen_hyperparameters()["validation_auc"] <= 1
    )


def test_numpy_torch_and_lazy_inputs_agree(fitted):
    probe, rows, _ = fitted
    expected = probe.decision_function(rows)
    as_torch = AttentionRows(torch.from_numpy(rows.attn), torch.from_numpy(rows.lengths), torch.from_numpy(rows.tokens))
    np.testing.assert_array_equal(probe.decision_function(as_torch), expected)
    view = xr.Dataset(
        {"attn": (("example", "layer", "head", "token"), rows.attn), "tokens": (("example", "token"), rows.tokens)},
        coords={"seq_len": ("example", rows.lengths)},
    ).chunk({"example": 50})
    np.testing.assert_allclose(probe.decision_function(AttentionRows.from_view(view)), expected, rtol=1e-6)
    np.testing.assert_array_equal(
        probe.decision_function(rows.attn, lengths=rows.lengths, tokens=rows.tokens), expected
    )


def test_bad_input_is_one_clear_error(fitted):
    probe, rows, y = fitted
    with pytest.raises(ProbeInputError, match="two classes"):
        AttentionRowProbe().fit(rows, np.ones_like(y))
    with pytest.raises(ProbeInputError, match="lengths must lie"):
        AttentionRows(rows.attn, rows.lengths + 100)
    with pytest.raises(ProbeInputError, match="fitted on 6 heads"):
        probe.decision_function(AttentionRows(rows.attn[:, :1], rows.lengths))
    broken = rows.attn.copy()
    broken[0, 0, 0, 0] = np.nan
    with pytest.raises(ProbeInputError, match="NaN"):
        probe.decision_function(AttentionRows(broken, rows.lengths, rows.tokens))
    with pytest.raises(ProbeInputError, match="fitted with token ids"):
        probe.decision_function(AttentionRows(rows.attn, rows.lengths))
    rare = np.zeros(60, dtype=int)
    rare[:2] = 1
    with pytest.raises(ProbeInputError, match="3-fold validation needs .* the rarer class has 2"):
        AttentionRowProbe().fit(AttentionRows(rows.attn[:60], rows.lengths[:60], rows.tokens[:60]), rare)
    with pytest.raises(ProbeInputError, match="fewer than the 5 folds"):
        StackedProbe().fit([np.zeros((60, 2))], rare)


def test_padding_nan_duplicates_unseen_tokens_and_a_lone_row(fitted):
    probe, rows, y = fitted
    padded = rows.attn.copy()
    for i, length in enumerate(rows.lengths):
        padded[i, :, :, length:] = np.nan
    np.testing.assert_array_equal(
        AttentionRows(padded, rows.lengths, rows.tokens).batch(np.arange(5))[0], rows.batch(np.arange(5))[0]
    )
    repeated = rows.batch(np.array([0, 0, 2]))[0]  # a repeated row is read twice, not as its neighbour
    np.testing.assert_array_equal(repeated[1], repeated[0])
    assert not np.array_equal(repeated[1], rows.batch(np.array([0, 1, 2]))[0][1])
    unseen = [AttentionRows(rows.attn, rows.lengths, np.where(rows.tokens > 0, value, 0)) for value in (1000, 5000)]
    np.testing.assert_array_equal(probe.decision_function(unseen[0]), probe.decision_function(unseen[1]))
    assert [len(b) for b in rows.batches(np.arange(65), 64)] == [33, 32]
    AttentionRowProbe(max_epochs=1).fit(AttentionRows(rows.attn[:81], rows.lengths[:81], rows.tokens[:81]), y[:81])


def test_stacked_probe_is_cross_fitted_on_the_training_rows_only():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    informative = y[:, None] + rng.normal(size=(400, 3))
    noise = rng.normal(size=(400, 5))
    stacked = StackedProbe(n_folds=4).fit([informative[:300], noise[:300]], y[:300])
    by_hand = LogisticRegressionProbe().fit(informative[:300], y[:300])
    np.testing.assert_allclose(
        stacked.base_scores([informative[300:], noise[300:]])[:, 0], by_hand.decision_function(informative[300:])
    )
    out_of_fold = np.zeros((300, 2))
    for fit_rows, held_out in StratifiedKFold(4, shuffle=True, random_state=0).split(np.zeros(300), y[:300]):
        for j, X in enumerate((informative[:300], noise[:300])):
            base = LogisticRegressionProbe().fit(X[fit_rows], y[:300][fit_rows])
            out_of_fold[held_out, j] = base.decision_function(X[held_out])
    final = LogisticRegressionProbe(standardize=True).fit(out_of_fold, y[:300])
    test_scores = np.column_stack(
        [LogisticRegressionProbe().fit(X[:300], y[:300]).decision_function(X[300:]) for X in (informative, noise)]
    )
    np.testing.assert_allclose(
        stacked.decision_function([informative[300:], noise[300:]]), final.decision_function(test_scores), rtol=1e-6
    )
    assert stacked.chosen_hyperparameters()["base_weights"] == final.feature_weights().tolist()
    assert probe_metrics(stacked, [informative[300:], noise[300:]], y[300:])["roc_auc"] > 0.85
    with pytest.raises(ProbeInputError, match="same rows"):
        StackedProbe().fit([informative, noise[:10]], y)
