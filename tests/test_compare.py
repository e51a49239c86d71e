"""Paired comparisons, seeds and the shuffled-label control through `featstore probe` and `featstore results`."""

import json

import numpy as np
import pandas as pd
import pytest

from featstore.api import Store
from featstore.cli import main
from featstore.probing import fit
from featstore.probing.compare import across_datasets, verdicts
from featstore.probing.inputs import FeatureMatrix
from featstore.probing.results import natural_order, setting_labels
from featstore.probing.specs import ProbeSpec
from probes.metrics import bootstrap_mean_interval, paired_auc_difference
from tests.builders import MODEL


def probe(project, *args):
    return main(["--root", str(project.root), "probe", "--model", MODEL, *args])


def results_json(project, capsys, *args):
    capsys.readouterr()
    assert main(["--root", str(project.root), "results", "--format", "json", *args]) == 0
    return pd.DataFrame(json.loads(capsys.readouterr().out))


@pytest.fixture
def built(toy_copy):
    return toy_copy


def test_vs_baseline_equals_the_paired_test_on_the_stored_scores(built, capsys):
    assert probe(built, "--baseline") == 0
    assert probe(built, "--aggregation", "first", "entropy") == 0
    frame = results_json(built, capsys, "--vs", "baseline")
    assert {"delta_auc", "delta_ci_low", "delta_ci_high", "p_value", "p_holm", "n_test"} <= set(frame.columns)
    assert list(frame["setting"]) == ["logreg attn L0,1 entropy", "logreg attn L0,1 first"]
    store = Store(built)
    labels = store.sql("SELECT example_id, label FROM examples").set_index("example_id")["label"]

    def scores(where):
        rid = store.sql(f"SELECT result_id FROM probe_results WHERE {where}")["result_id"][0]
        return store.sql("SELECT example_id, score FROM probe_scores WHERE result_id = ?", [rid]).set_index(
            "example_id"
        )["score"]

    base = scores("baseline")
    for row in frame.itertuples():
        mine = scores(f"aggregation = '{row.setting.split()[-1]}'").loc[base.index]
        expected = paired_auc_difference(labels.loc[base.index].to_numpy(), mine.to_numpy(), base.to_numpy())
        assert (row.delta_auc, row.delta_ci_low, row.delta_ci_high, row.p_value, row.n_test) == pytest.approx(
            (expected.delta, expected.ci_low, expected.ci_high, expected.p_value, expected.n)
        )
        assert row.p_holm == pytest.approx(min(row.p_value, 1.0))  # one dataset: Holm changes nothing
    capsys.readouterr()
    assert main(["--root", str(built.root), "results", "--vs", "length"]) == 1
    assert "no results of the reference 'length'" in capsys.readouterr().err


def test_across_datasets_equals_a_plain_loop():
    rng = np.random.default_rng(0)
    rows = [
        {
            "model": "m",
            "dataset": f"d{d}",
            "setting": s,
            "delta_auc": rng.normal(0, 0.05),
            "p_holm": rng.uniform(0, 0.1),
            "reference_auc": rng.uniform(0.6, 1.0),
        }
        for s in ("a", "b")
        for d in range(7)
    ]
    comparisons = pd.DataFrame(rows)
    comparisons["verdict"] = verdicts(comparisons)
    summary = across_datasets(comparisons, seed=3).set_index("setting")
    hard = {"d1", "d4", "d5"}
    summary_hard = across_datasets(comparisons, hard, seed=3).set_index("setting")
    for setting in ("a", "b"):
        for table, keep in ((summary, lambda d: True), (summary_hard, lambda d: d in hard)):
            deltas, counts = [], {"better": 0, "same": 0, "worse": 0}
            for row in rows:
                if row["setting"] == setting and keep(row["dataset"]):
                    deltas.append(row["delta_auc"])
                    significant = row["p_holm"] < 0.05
                    counts[
                        "better"
                        if significant and row["delta_auc"] > 0
                        else "worse"
                        if significant and row["delta_auc"] < 0
                        else "same"
                    ] += 1
            got = table.loc[setting]
            assert got["n_datasets"] == len(deltas) and got["mean_delta_auc"] == pytest.approx(
                sum(deltas) / len(deltas)
            )
            assert (got["mean_ci_low"], got["mean_ci_high"]) == bootstrap_mean_interval(np.array(deltas), seed=3)
            assert {k: got[k] for k in counts} == counts


def test_settings_sort_naturally_with_controls_beside_their_setting():
    frame = pd.DataFrame(
        [
            {
                "model": "m",
                "dataset": "d",
                "probe": "logreg",
                "feature": f,
                "layers": layers,
                "aggregation": a,
                "baseline": b,
                "control": c,
                "seed": 0,
            }
            for f, layers, a, b, c in [
                ("attn", "10", "first", False, ""),
                ("attn", "2", "first", False, ""),
                ("attn", "0,1,2", "first", False, "shuffled-labels"),
                ("resid", "1", "last-token", True, ""),
                ("attn", "0,1,2", "first", False, ""),
                ("length", "", "log-seq_len", False, ""),
            ]
        ]
    )
    ordered = natural_order(frame.assign(setting=setting_labels(frame)))["setting"].tolist()
    assert ordered == [
        "logreg resid L1 last-token [baseline]",
        "logreg length log-seq_len",
        "logreg attn L0-2 first",
        "logreg attn L0-2 first [shuffled-labels]",
        "logreg attn L2 first",
        "logreg attn L10 first",
    ]


def planted_matrix(project, spec, split):
    """Two informative features plus noise: a probe on them scores AUC near 1, on shuffled labels near 0.5."""
    rng = np.random.default_rng({"train": 0, "test": 1}[split])
    y = np.arange(400) % 2
    X = rng.normal(size=(400, 6)) + 2.5 * y[:, None] * (np.arange(6) < 2)
    return FeatureMatrix(X, y, np.arange(400) + (0 if split == "train" else 10_000), [f"f{i}" for i in range(6)])


def test_shuffled_label_control_sits_near_half_where_the_real_probe_scores_high(built, monkeypatch):
    monkeypatch.setattr(fit, "feature_matrix", planted_matrix)
    spec = ProbeSpec("1_toy", MODEL, "attn", (0, 1), "first", "logreg")
    real = fit.fit_and_score(built, spec, built.root)
    control = fit.fit_and_score(built, ProbeSpec(**{**spec.__dict__, "control": "shuffled-labels"}), built.root)
    assert real.row["roc_auc"] >= 0.9 and abs(control.row["roc_auc"] - 0.5) <= 0.1
    assert control.row["control"] == "shuffled-labels" and control.row["result_id"] != real.row["result_id"]
    assert real.row["result_id"] == spec.result_id  # a plain setting keeps the id it had before controls existed
    np.testing.assert_array_equal(fit.shuffled(np.arange(10), 3), fit.shuffled(np.arange(10), 3))


def test_seeds_give_one_row_each_the_spread_and_identical_refits(built, capsys):
    assert probe(built, "--aggregation", "first", "--seeds", "3", "--seed", "4") == 0
    assert probe(built, "--aggregation", "first", "--control", "shuffled-labels") == 0
    rows = Store(built).sql("SELECT * FROM probe_results ORDER BY control, seed")
    assert rows["seed"].tolist() == [4, 5, 6, 0] and rows["control"].tolist() == ["", "", "", "shuffled-labels"]
    table = results_json(built, capsys, "--ci")
    assert table.columns.tolist() == [
        "dataset",
        f"{MODEL} logreg attn L0,1 first",
        f"{MODEL} logreg attn L0,1 first [shuffled-labels]",
    ]
    aucs = rows["roc_auc"][:3]
    assert table.iloc[0, 1] == f"{aucs.mean():.3f} ±{aucs.std(ddof=1):.3f}"
    scores = Store(built).sql("SELECT * FROM probe_scores ORDER BY ALL")
    assert probe(built, "--aggregation", "first", "--seeds", "3", "--seed", "4", "--overwrite-train") == 0
    again = Store(built).sql("SELECT * FROM probe_results ORDER BY control, seed")
    assert again["roc_auc"].tolist() == rows["roc_auc"].tolist()
    assert Store(built).sql("SELECT * FROM probe_scores ORDER BY ALL").equals(scores)
