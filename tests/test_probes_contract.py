"""The probes follow scikit-learn's estimator contract (its estimator checks), and every family comes from one
registry: the command line's choices, the saved files' family names and the estimator classes agree."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.utils.estimator_checks import (
    check_do_not_raise_errors_in_init_or_set_params,
    check_estimator_cloneable,
    check_estimator_repr,
    check_estimators_unfitted,
    check_get_params_invariance,
    check_mixin_order,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
    check_valid_tag_types,
    parametrize_with_checks,
)

from featstore.probing import families as cli_families
from probes import AttentionRowProbe, LogisticRegressionProbe, MassMeanProbe, StackedProbe
from probes.base import BinaryProbe
from probes.families import FAMILIES, MATRIX, family_name

WORDING = "its one-line ProbeInputError reads 'y needs exactly two classes, got [...]', not sklearn's wording"
EXPECTED_FAILURES = {
    "check_fit2d_1sample": WORDING,
    "check_classifier_not_supporting_multiclass": WORDING,
    "check_fit2d_predict1d": "its one-line ProbeInputError keeps sklearn's first line, not its 'Reshape your data'",
}
NO_N_ITER = {
    "check_non_transformer_estimators_n_iter": "max_iter bounds each fit of the C grid; no n_iter_ is kept (nor saved)"
}


def expected_failures(probe: BinaryProbe) -> dict[str, str]:
    return {**EXPECTED_FAILURES, **(NO_N_ITER if isinstance(probe, LogisticRegressionProbe) else {})}


# a grid of two Cs instead of ten: the same code, a fifth of the fits
@parametrize_with_checks(
    [LogisticRegressionProbe(Cs=[1.0, 0.01]), MassMeanProbe(), MassMeanProbe(tilt="lda")],
    expected_failed_checks=expected_failures,
    xfail_strict=True,
)
def test_matrix_probes_pass_the_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# X is AttentionRows (4-D rows and their lengths) or a list of matrices, so every check that fits on a 2-D array
# fails at its first line; these are the checks of the estimator API itself.
API_CHECKS = [
    check_do_not_raise_errors_in_init_or_set_params,
    check_estimator_cloneable,
    check_estimator_repr,
    check_estimators_unfitted,
    check_get_params_invariance,
    check_mixin_order,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
    check_valid_tag_types,
]


@pytest.mark.parametrize("probe", [AttentionRowProbe(), StackedProbe()], ids=["attention-row", "stacked"])
@pytest.mark.parametrize("check", API_CHECKS, ids=lambda check: check.__name__)
def test_row_and_stacked_probes_pass_the_api_checks(probe, check):
    check(type(probe).__name__, probe)


def test_score_is_mean_accuracy_and_the_defaults_of_the_protocol():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = (X[:, 0] + rng.normal(size=120) > 0).astype(int)
    probe = MassMeanProbe().fit(X, y)
    assert isinstance(probe.score(X, y), float) and probe.score(X, y) == np.mean(probe.predict(X) == y)
    stacked = StackedProbe([MassMeanProbe()] * 2, MassMeanProbe(), n_folds=3).fit([X[:, :2], X[:, 2:]], y)
    assert stacked.feature_weights() is None and stacked.standardised_weights([X[:, :2], X[:, 2:]]) is None
    np.testing.assert_array_equal(probe.standardised_weights(X), probe.feature_weights() * X.std(axis=0))


def test_every_preset_makes_a_seeded_probe_saved_under_its_family_name():
    for name, family in FAMILIES.items():
        for preset in family.presets:
            probe = family.make(preset, 7)
            assert isinstance(probe, BinaryProbe) and probe.random_state == 7
            assert family_name(probe) == name
            assert cli_families.FAMILIES[preset].input == family.input
    assert list(FAMILIES) == ["logistic-regression", "mass-mean", "attention-row", "stacked"]  # names in files
    assert list(cli_families.FAMILIES) == ["logreg", "mass-mean", "mass-mean-lda", "attention-row", "meta"]
    assert [f.input for f in cli_families.FAMILIES.values()] == [MATRIX, MATRIX, MATRIX, "rows", "stack"]
    assert cli_families.FAMILIES["mass-mean-lda"].make(1).get_params()["tilt"] == "lda"


def test_the_command_line_reads_the_registry_without_importing_the_estimators():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, featstore.cli; print(sorted({'torch', 'sklearn', 'probes.base'} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
