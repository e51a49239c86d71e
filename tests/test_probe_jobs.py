"""`featstore probe --jobs N`: combinations fitted in worker processes give the rows one process gives, and a
warning raised while fitting (here or in a worker) names its dataset and setting."""

import shutil

import pytest

from featstore.api import Store
from featstore.cli import main
from featstore.probing.families import FAMILIES, ProbeFamily
from featstore.project import open_project
from probes import LogisticRegressionProbe
from tests.builders import MODEL


def probe(project, *args):
    return main(["--root", str(project.root), "probe", "--model", MODEL, *args])


def results(project):
    return Store(project).sql("SELECT result_id, roc_auc, hyperparameters FROM probe_results ORDER BY result_id")


def test_a_convergence_warning_names_the_dataset_and_setting(toy_copy, capsys, monkeypatch):
    monkeypatch.setitem(FAMILIES, "logreg", ProbeFamily("matrix", lambda seed: LogisticRegressionProbe(max_iter=1), ""))
    assert probe(toy_copy, "--baseline") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "ConvergenceWarning" in line]
    assert lines and all(
        line.startswith(
            "featstore: warning: ConvergenceWarning: 1_toy (resid L1, last-token, "
            "logreg, baseline): lbfgs failed to converge"
        )
        for line in lines
    )


def test_jobs_give_the_rows_of_one_process_and_pass_warnings_on(toy_copy, tmp_path, capsys):
    single = open_project(shutil.copytree(toy_copy.root, tmp_path / "single"))
    settings = ["--aggregation", "mean", "first", "--probe", "logreg", "mass-mean"]
    assert probe(single, *settings, "--jobs", "1") == 0
    capsys.readouterr()
    assert probe(toy_copy, *settings, "--jobs", "2") == 0
    err = capsys.readouterr().err.splitlines()
    assert results(toy_copy).equals(results(single)) and len(results(toy_copy)) == 4
    length_only = [line for line in err if "LengthOnlyFeatureWarning" in line]
    assert {line.split(": ")[3] for line in length_only} == {
        "1_toy (attn L0,1, mean, logreg)",
        "1_toy (attn L0,1, mean, mass-mean)",
    }


def test_jobs_must_be_a_positive_number(toy_copy, capsys):
    with pytest.raises(SystemExit) as exit_:
        probe(toy_copy, "--jobs", "0")
    assert exit_.value.code == 2 and "expected a whole number of at least 1, got '0'" in capsys.readouterr().err
