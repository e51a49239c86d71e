"""`featstore probe` and `featstore results`: rows checked against probes fitted by hand on the raw arrays."""

import csv
import io
import json
import shutil

import numpy as np
import pytest
import zarr
from sklearn.metrics import roc_auc_score

from featstore.api import Store
from featstore.catalog.database import catalog_writer
from featstore.cli import main
from featstore.probing import fit
from probes import LogisticRegressionProbe, MassMeanProbe, load_probe, probe_metrics
from probes.metrics import roc_auc_ci
from tests.builders import MODEL, published_folder, rewrite_stored


def probe(project, *args):
    return main(["--root", str(project.root), "probe", "--model", MODEL, *args])


def results(project):
    return Store(project).sql("SELECT * FROM probe_results ORDER BY result_id")


def raw_arrays(project, split):
    group = zarr.open_group(published_folder(project, split), mode="r")
    ids = group["example_id"][:]
    labels = Store(project).sql("SELECT example_id, label FROM examples").set_index("example_id")["label"]
    return group["attn"][:].astype(np.float32), group["resid"][:].astype(np.float32), labels[ids].to_numpy()


def raw_index(project, split):
    group = zarr.open_group(published_folder(project, split), mode="r")
    return group["example_id"][:], group["seq_len"][:]


@pytest.fixture
def built(toy_copy):
    return toy_copy


def test_rows_equal_probes_fitted_by_hand_on_the_stored_arrays(built):
    assert probe(built, "--baseline") == 0
    assert probe(built, "--aggregation", "first", "--probe", "logreg", "mass-mean-lda") == 0
    rows = results(built).set_index(["feature", "probe"])
    attn_train, resid_train, y_train = raw_arrays(built, "train")
    attn_test, resid_test, y_test = raw_arrays(built, "test")
    baseline = LogisticRegressionProbe(random_state=0).fit(resid_train[:, 1], y_train)
    assert rows.loc[("resid", "logreg"), "roc_auc"] == pytest.approx(
        probe_metrics(baseline, resid_test[:, 1], y_test)["roc_auc"], abs=1e-9
    )
    assert rows.loc[("resid", "logreg"), "layers"] == "1" and rows.loc[("resid", "logreg"), "baseline"]
    first = LogisticRegressionProbe(random_state=0).fit(attn_train[..., 0].reshape(len(y_train), -1), y_train)
    assert rows.loc[("attn", "logreg"), "roc_auc"] == pytest.approx(
        probe_metrics(first, attn_test[..., 0].reshape(len(y_test), -1), y_test)["roc_auc"], abs=1e-9
    )
    lda = MassMeanProbe(tilt="lda").fit(attn_train[..., 0].reshape(len(y_train), -1), y_train)
    assert rows.loc[("attn", "mass-mean-lda"), "roc_auc"] == pytest.approx(
        probe_metrics(lda, attn_test[..., 0].reshape(len(y_test), -1), y_test)["roc_auc"], abs=1e-9
    )
    row = rows.loc[("attn", "logreg")]
    assert (row["n_train"], row["n_test"], row["n_features"]) == (len(y_train), len(y_test), 8)
    assert json.loads(row["hyperparameters"])["C"] == first.C_
    assert (built.store_dir / row["probe_path"]).is_file()


def test_reruns_skip_and_overwrite_flags_refit_or_reevaluate(built):
    assert probe(built, "--aggregation", "entropy") == 0
    first = results(built)
    assert probe(built, "--aggregation", "entropy") == 0
    assert results(built).equals(first)
    assert probe(built, "--aggregation", "entropy", "--overwrite-train") == 0
    refit = results(built)
    assert len(refit) == 1 and refit["created_at"][0] > first["created_at"][0]
    assert refit["roc_auc"][0] == pytest.approx(first["roc_auc"][0])
    shutil.rmtree(published_folder(built, "train"))
    assert probe(built, "--aggregation", "entropy", "--overwrite-eval") == 0
    reevaluated = results(built)
    assert reevaluated["created_at"][0] == refit["created_at"][0]
    assert reevaluated["roc_auc"][0] == pytest.approx(refit["roc_auc"][0])


def test_fitting_reads_train_only_and_evaluation_test_only(built, monkeypatch):
    events = []
    real_matrix = fit.feature_matrix
    monkeypatch.setattr(
        fit, "feature_matrix", lambda p, spec, split: (events.append(split), real_matrix(p, spec, split))[1]
    )
    real_fit = LogisticRegressionProbe.fit
    monkeypatch.setattr(
        LogisticRegressionProbe, "fit", lambda self, X, y: (events.append("fit"), real_fit(self, X, y))[1]
    )
    assert probe(built, "--aggregation", "bins:4") == 0
    assert events == ["train", "fit", "test"]


def test_hard_subset_and_results_table(built, capsys):
    assert probe(built, "--baseline") == 0
    auc = Store(built).sql("SELECT roc_auc FROM baselines WHERE dataset = '1_toy'")["roc_auc"][0]
    assert probe(built, "--hard", "--hard-threshold", str(auc - 1e-6), "--aggregation", "max") == 0
    assert len(results(built)) == 1
    assert probe(built, "--hard", "--hard-threshold", str(auc + 1e-6), "--aggregation", "max") == 0
    assert len(results(built)) == 2
    capsys.readouterr()
    assert main(["--root", str(built.root), "results", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("dataset,") and "random:tiny logreg resid L1 last-token" in out[0]
    assert out[1].startswith("1_toy,") and out[2].startswith("mean (n=1),")


def corrupt_first_value(project):
    rewrite_stored(project, "train", lambda group: group["attn"].__setitem__((0, 0, 0, 0), np.nan))


def single_class_test_split(project):
    with catalog_writer(project) as con:
        con.execute("UPDATE examples SET label = 1 WHERE split = 'test'")


BAD = {
    "no features for model": (None, ["--model", "random:gpt2-medium"], "no features of model"),
    "missing layer": (None, ["--layers", "7"], "layer 7 does not exist"),
    "bad layer word": (None, ["--layers", "middle"], "--layers takes"),
    "unknown aggregation": (None, ["--aggregation", "median"], "aggregation"),
    "NaN in features": (corrupt_first_value, ["--aggregation", "first"], "NaN"),
    "one class": (single_class_test_split, ["--aggregation", "first"], "one class only"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(built, capsys, case):
    damage, args, expected = BAD[case]
    if damage:
        damage(built)
    command = ["--root", str(built.root), "probe", *args]
    if "--model" not in args:
        command[3:3] = ["--model", MODEL]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    assert results(built).empty
    assert not (built.store_dir / "probes").exists()


def test_length_only_mean_warns_in_one_line_on_the_command_line(built):
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "featstore.cli",
        "--root",
        str(built.root),
        "probe",
        "--model",
        MODEL,
        "--aggregation",
        "mean",
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    assert completed.returncode == 0 and completed.stdout == ""
    warning_lines = [line for line in completed.stderr.splitlines() if "LengthOnlyFeatureWarning" in line]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("featstore: warning: ")
    assert "1/seq_len" in warning_lines[0]


def test_baseline_is_not_mistaken_for_a_plain_resid_probe(built):
    assert probe(built, "--feature", "resid", "--layers", "1") == 0
    assert probe(built, "--baseline") == 0
    assert len(results(built)) == 2
    assert Store(built).sql("SELECT count(*) AS n FROM baselines")["n"][0] == 1


def test_repeated_and_differently_spelled_aggregations_fit_once(built):
    assert probe(built, "--aggregation", "first", "first", "BINS:8", "bins:8", "--probe", "logreg", "logreg") == 0
    assert sorted(results(built)["aggregation"]) == ["bins:8", "first"]
    assert not list((built.store_dir / "probes").rglob("*.staged"))


def test_rebuilding_features_drops_their_probe_results(built):
    from featstore.extraction.build import build_features
    from featstore.extraction.plan import BuildSettings

    assert probe(built, "--aggregation", "first") == 0
    assert len(Store(built).sql("FROM probe_scores")) == 100 and len(Store(built).sql("FROM probe_head_weights")) == 8
    build_features(built, MODEL, None, BuildSettings(device="cpu", limit=50, overwrite=True))
    assert results(built).empty
    assert Store(built).sql("FROM probe_scores").empty and Store(built).sql("FROM probe_head_weights").empty
    assert probe(built, "--aggregation", "first") == 0
    assert results(built)["n_train"].tolist() == [50]


def test_unknown_dataset_and_resid_aggregation_are_one_line_errors(built, capsys):
    assert probe(built, "--datasets", "nope") == 1
    assert probe(built, "--feature", "resid", "--aggregation", "first") == 1
    lines = capsys.readouterr().err.splitlines()
    assert (
        len(lines) == 2
        and "dataset 'nope' is not in the catalog" in lines[0]
        and "applies to --feature attn" in lines[1]
    )


def test_length_control_equals_a_probe_fitted_by_hand_on_log_length(built):
    assert probe(built, "--feature", "length") == 0
    row = results(built).iloc[0]
    assert (row["feature"], row["layers"], row["aggregation"], row["n_features"]) == ("length", "", "log-seq_len", 2)
    (_, _, y_train), (_, _, y_test) = raw_arrays(built, "train"), raw_arrays(built, "test")
    (_, train_len), (_, test_len) = raw_index(built, "train"), raw_index(built, "test")
    by_hand = LogisticRegressionProbe(random_state=0).fit(np.log(np.c_[train_len]) ** [1, 2], y_train)
    assert row["roc_auc"] == pytest.approx(
        probe_metrics(by_hand, np.log(np.c_[test_len]) ** [1, 2], y_test)["roc_auc"], abs=1e-9
    )


def test_stored_scores_are_the_saved_probes_decisions_and_the_interval_follows_from_them(built):
    assert probe(built, "--aggregation", "entropy", "--probe", "logreg", "mass-mean") == 0
    attn_test, _, y_test = raw_arrays(built, "test")
    ids, lengths = raw_index(built, "test")
    valid = np.arange(attn_test.shape[-1]) < lengths[:, None, None, None]
    plogp = np.where(valid & (attn_test > 0), attn_test * np.log(np.where(attn_test > 0, attn_test, 1)), 0)
    X_test = -plogp.sum(-1).reshape(len(ids), -1)
    for row in results(built).itertuples():
        stored = Store(built).sql("SELECT example_id, score FROM probe_scores WHERE result_id = ?", [row.result_id])
        stored = stored.set_index("example_id")["score"].loc[ids].to_numpy()
        saved = load_probe(built.store_dir / row.probe_path)
        np.testing.assert_allclose(stored, saved.decision_function(X_test), rtol=1e-5, atol=1e-6)
        assert row.roc_auc == pytest.approx(roc_auc_score(y_test, stored))
        assert (row.roc_auc_ci_low, row.roc_auc_ci_high) == pytest.approx(roc_auc_ci(y_test, stored))
        assert row.roc_auc_ci_low < row.roc_auc < row.roc_auc_ci_high


def test_head_weights_are_norms_of_standardised_weights_per_head(built):
    assert probe(built, "--aggregation", "bins:2") == 0
    row = results(built).iloc[0]
    attn_train, _, y_train = raw_arrays(built, "train")
    saved = load_probe(built.store_dir / row["probe_path"])
    lengths = raw_index(built, "train")[1]
    bins = np.zeros(attn_train.shape[:3] + (2,))
    for i, length in enumerate(lengths):  # bin b holds the tokens t with floor(2 t / length) == b
        for b in range(2):
            members = [t for t in range(length) if (2 * t) // length == b]
            bins[i, :, :, b] = (
                attn_train[i, :, :, members].mean(axis=0) if members else attn_train[i, :, :, (b * length) // 2]
            )
    X = bins.reshape(len(y_train), -1)
    standardised = (saved.feature_weights() * X.std(axis=0)).reshape(2, 4, 2)
    stored = Store(built).sql("SELECT layer, head, weight FROM probe_head_weights ORDER BY layer, head")
    assert stored[["layer", "head"]].values.tolist() == [[layer, head] for layer in range(2) for head in range(4)]
    np.testing.assert_allclose(stored["weight"], np.sqrt((standardised**2).sum(-1)).ravel(), rtol=1e-4)


def test_each_layer_fits_one_probe_per_layer_and_results_show_intervals(built, capsys):
    assert probe(built, "--each-layer", "--aggregation", "first") == 0
    rows = results(built).sort_values("layers")
    assert rows["layers"].tolist() == ["0", "1"] and rows["n_features"].tolist() == [4, 4]
    capsys.readouterr()
    assert main(["--root", str(built.root), "results", "--ci", "--format", "csv"]) == 0
    header, line, mean = csv.reader(io.StringIO(capsys.readouterr().out))
    assert header == ["dataset", "random:tiny logreg attn L0 first", "random:tiny logreg attn L1 first"]
    assert line == ["1_toy"] + [
        f"{r.roc_auc:.3f} [{r.roc_auc_ci_low:.3f}, {r.roc_auc_ci_high:.3f}]" for r in rows.itertuples()
    ]
    assert mean == ["mean (n=1)"] + [f"{r.roc_auc:.3f}" for r in rows.itertuples()]


def test_length_control_takes_no_layers_or_aggregation(built, capsys):
    assert probe(built, "--feature", "length", "--layers", "0") == 1
    assert probe(built, "--feature", "length", "--aggregation", "first") == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "do not apply to --feature length" in lines[0] and "length takes none" in lines[1]


def test_baseline_and_a_plain_probe_of_the_same_layer_get_their_own_columns_and_seeds_share_one(built, capsys):
    assert probe(built, "--baseline") == 0
    assert probe(built, "--feature", "resid", "--layers", "1") == 0
    assert probe(built, "--feature", "resid", "--layers", "1", "--seed", "3") == 0
    capsys.readouterr()
    assert main(["--root", str(built.root), "results", "--ci", "--format", "csv"]) == 0
    header = next(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert header == [
        "dataset",
        "random:tiny logreg resid L1 last-token [baseline]",
        "random:tiny logreg resid L1 last-token",
    ]


def test_learned_row_probe_and_meta_probe_are_results_like_any_other(built):
    from probes import AttentionRows

    assert probe(built, "--probe", "attention-row", "meta", "--aggregation", "first", "entropy") == 0
    rows = results(built).set_index("probe")
    assert rows.loc["attention-row", "aggregation"] == "rows"
    assert rows.loc["meta", "aggregation"] == "stack[L0,1 first;L0,1 entropy]"
    assert {"best_epoch", "validation_auc"} <= set(json.loads(rows.loc["attention-row", "hyperparameters"]))
    group = zarr.open_group(published_folder(built, "test"), mode="r")
    ids = group["example_id"][:]
    rows_input = AttentionRows(group["attn"][:], group["seq_len"][:], group["tokens"][:])
    saved = load_probe(built.store_dir / rows.loc["attention-row", "probe_path"])
    stored = (
        Store(built)
        .sql("SELECT example_id, score FROM probe_scores WHERE result_id = ?", [rows.loc["attention-row", "result_id"]])
        .set_index("example_id")["score"]
        .loc[ids]
    )
    np.testing.assert_allclose(stored, saved.decision_function(rows_input), rtol=1e-5, atol=1e-6)
    logs = (built.store_dir / rows.loc["attention-row", "probe_path"]).with_suffix(".logs")
    assert all("val_auc" in (logs / f"fold-{k}" / "metrics.csv").read_text() for k in range(3))
    weights = Store(built).sql(
        "SELECT layer, head, weight FROM probe_head_weights WHERE result_id = ? ORDER BY ALL",
        [rows.loc["attention-row", "result_id"]],
    )
    np.testing.assert_allclose(weights["weight"], saved.head_importance().ravel())
    attn_test, _, y_test = raw_arrays(built, "test")
    meta = load_probe(built.store_dir / rows.loc["meta", "probe_path"])
    first = attn_test[..., 0].reshape(len(ids), -1)
    lengths = group["seq_len"][:]
    valid = np.arange(attn_test.shape[-1]) < lengths[:, None, None, None]
    entropy = -np.where(valid & (attn_test > 0), attn_test * np.log(np.where(attn_test > 0, attn_test, 1)), 0).sum(-1)
    assert rows.loc["meta", "roc_auc"] == pytest.approx(
        probe_metrics(meta, [first, entropy.reshape(len(ids), -1)], y_test)["roc_auc"], abs=1e-6
    )
    assert not list((built.store_dir / "probes").rglob("*.staged"))
    before = results(built)
    assert probe(built, "--probe", "attention-row", "meta", "--aggregation", "first", "entropy") == 0
    assert results(built).equals(before)
    assert probe(built, "--probe", "attention-row", "--overwrite-eval") == 0
    rescored = results(built).set_index("probe")
    assert rescored.loc["attention-row", "roc_auc"] == pytest.approx(rows.loc["attention-row", "roc_auc"])
    assert rescored.loc["attention-row", "created_at"] == rows.loc["attention-row", "created_at"]


def test_learned_probes_refuse_other_features_in_one_line(built, capsys):
    assert probe(built, "--feature", "resid", "--probe", "attention-row") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use them with --feature attn" in err


def test_learned_probe_on_nan_rows_is_one_line_and_writes_nothing(built, capsys):
    corrupt_first_value(built)
    assert probe(built, "--probe", "attention-row") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN" in err and "attention-row" in err
    assert results(built).empty
    assert not (built.store_dir / "probes").exists() or not [
        p for p in (built.store_dir / "probes").rglob("*") if p.is_file()
    ]


def test_baseline_refuses_options_it_would_ignore(built, capsys):
    assert probe(built, "--baseline", "--feature", "length", "--each-layer") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "drop --feature, --each-layer" in err
    assert results(built).empty
