"""`featstore report`: what the site shows equals the catalog and the stored arrays, checked by plain
loops over the raw Zarr arrays; bad requests write nothing; a rerun replaces the folder whole."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import zarr
from transformers import AutoTokenizer

from featstore.api import Store
from featstore.catalog.database import catalog_writer
from featstore.cli import main
from featstore.project import Project
from featstore.report import data
from featstore.store.layout import tokenizer_path
from probes.metrics import paired_auc_difference, roc_auc_ci
from tests.builders import MODEL, built_toy_project, published_folder

FOLDER = "random-tiny"


def read_json(project, *parts):
    return json.loads(project.report_dir.joinpath("data", *parts).read_text())


def catalog(project, query, params=None):
    return Store(project).sql(query, params)


def raw_split(project, split="test"):
    return zarr.open_group(published_folder(project, split), mode="r")


def test_overview_equals_the_catalog(reported):
    (section,) = read_json(reported, "overview.json")["sections"]
    rows = catalog(reported, "SELECT * FROM probe_results")
    (row,) = section["overview"]["rows"]
    cells = {cell["result_id"]: cell for cell in row["cells"].values()}
    assert set(cells) == set(rows["result_id"]) and len(rows) == 6
    length_auc = rows.loc[rows["feature"] == "length", "roc_auc"].item()
    for result in rows.itertuples():
        cell = cells[result.result_id]
        assert (cell["auc"], cell["low"], cell["high"]) == (
            result.roc_auc,
            result.roc_auc_ci_low,
            result.roc_auc_ci_high,
        )
        reference = result.baseline or result.feature == "length"
        assert cell["flagged"] == (None if reference else bool(result.roc_auc_ci_low <= length_auc))
    baseline = catalog(reported, "SELECT roc_auc FROM baselines")["roc_auc"].item()
    assert row["hard"] == (baseline < 0.8)
    roles = [s["role"] for s in section["overview"]["settings"]]
    assert roles[:2] == ["baseline", "length"] and set(roles[2:]) == {"probe"}
    for setting in section["overview"]["settings"]:
        (cell,) = [c for name, c in row["cells"].items() if name == setting["setting"]]
        assert setting["mean_auc"] == cell["auc"] and setting["n_datasets"] == 1


def test_delta_view_is_the_paired_test_against_the_baseline_on_the_stored_scores(reported):
    (section,) = read_json(reported, "overview.json")["sections"]
    (row,) = section["overview"]["rows"]
    scores = catalog(
        reported,
        "SELECT s.result_id, s.example_id, s.score, e.label FROM probe_scores s "
        "JOIN examples e USING (example_id) ORDER BY s.example_id",
    )
    baseline_id = catalog(reported, "SELECT result_id FROM probe_results WHERE baseline")["result_id"].item()
    base = scores[scores["result_id"] == baseline_id]
    compared = [cell for cell in row["cells"].values() if "delta" in cell]
    assert len(compared) == len(row["cells"]) - 1
    for cell in compared:
        mine = scores[scores["result_id"] == cell["result_id"]]
        expected = paired_auc_difference(base["label"].to_numpy(), mine["score"].to_numpy(), base["score"].to_numpy())
        assert (cell["delta"], cell["delta_low"], cell["delta_high"]) == pytest.approx(
            (expected.delta, expected.ci_low, expected.ci_high)
        )
        assert cell["p_holm"] == pytest.approx(expected.p_value)  # one dataset: Holm leaves p as it is
        assert cell["verdict"] == ("same" if expected.p_value >= 0.05 else "better" if expected.delta > 0 else "worse")
    assert section["overview"]["n_common"] == 1
    means = {s["setting"]: s["mean_delta"] for s in section["overview"]["settings"]}
    assert all(means[name] == pytest.approx(cell["delta"]) for name, cell in row["cells"].items() if "delta" in cell)


def test_intervals_and_roc_curves_follow_from_the_stored_scores(reported):
    page = read_json(reported, FOLDER, "1_toy.json")
    labels = catalog(reported, "SELECT example_id, label FROM examples").set_index("example_id")["label"]
    for curve in page["roc"]:
        scores = catalog(
            reported, "SELECT example_id, score FROM probe_scores WHERE result_id = ?", [curve["result_id"]]
        )
        y = labels.loc[scores["example_id"]].to_numpy()
        result = catalog(reported, "SELECT * FROM probe_results WHERE result_id = ?", [curve["result_id"]]).iloc[0]
        assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(result["roc_auc"], abs=1e-4)
        assert (result["roc_auc_ci_low"], result["roc_auc_ci_high"]) == pytest.approx(roc_auc_ci(y, scores["score"]))
    roles = [curve["role"] for curve in page["roc"]]
    assert roles.count("probe") == 3 and {"baseline", "length"} <= set(roles)


def test_layer_curves_head_map_and_featured_setting(reported):
    page = read_json(reported, FOLDER, "1_toy.json")
    rows = catalog(reported, "SELECT * FROM probe_results WHERE feature = 'attn'")
    (curve,) = page["layer_curves"]
    single = rows[rows["layers"].isin(["0", "1"])].sort_values("layers")
    assert curve["group"] == "logreg attn entropy" and curve["layers"] == [0, 1]
    assert curve["auc"] == single["roc_auc"].tolist() and curve["low"] == single["roc_auc_ci_low"].tolist()
    best = rows.sort_values("roc_auc", ascending=False).iloc[0]
    assert page["featured"]["result_id"] == best["result_id"]
    weights = catalog(
        reported, "SELECT layer, head, weight FROM probe_head_weights WHERE result_id = ?", [best["result_id"]]
    )
    grid = np.array(page["head_map"]["weights"], dtype=float)
    layers = page["head_map"]["layers"]
    for w in weights.itertuples():
        assert grid[layers.index(w.layer), w.head] == w.weight
    top = weights.sort_values("weight", ascending=False).head(4)
    assert [(h["layer"], h["head"]) for h in page["top_heads"]] == list(zip(top["layer"], top["head"], strict=False))


def test_class_mean_profiles_equal_a_loop_over_the_stored_rows(reported):
    page = read_json(reported, FOLDER, "1_toy.json")
    group = raw_split(reported)
    attn, lengths, ids = group["attn"][:].astype(np.float64), group["seq_len"][:], group["example_id"][:]
    labels = (
        catalog(reported, "SELECT example_id, label FROM examples").set_index("example_id")["label"].loc[ids].to_numpy()
    )
    bins = data.PROFILE_BINS
    for profile in page["top_heads"]:
        assert profile["example_ids"] == ids.tolist()  # the toy test split is smaller than the sample cap
        per_example = np.zeros((len(ids), bins))
        for i, length in enumerate(lengths):
            row = attn[i, profile["layer"], profile["head"]]
            for b in range(bins):
                members = [t for t in range(length) if (t * bins) // length == b]
                per_example[i, b] = row[members].mean() if members else row[(b * length) // bins]
        for name, label in (("positive", 1), ("negative", 0)):
            np.testing.assert_allclose(profile[name], per_example[labels == label].mean(axis=0), rtol=1e-5, atol=1e-7)
            assert profile[f"n_{name}"] == int((labels == label).sum())


def test_example_records_equal_the_stored_rows_tokens_and_scores(reported):
    page = read_json(reported, FOLDER, "1_toy.json")
    linked = [row for rows in page["examples"].values() for row in rows]
    assert [len(rows) for rows in page["examples"].values()] == [3, 3, 3] and len(
        {r["example_id"] for r in linked}
    ) == 9
    group = raw_split(reported)
    position = {int(example_id): i for i, example_id in enumerate(group["example_id"][:])}
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path(reported.tokenizers_dir, MODEL)))
    for row in linked:
        record = read_json(reported, FOLDER, "1_toy", "examples", f"{row['example_id']}.json")
        i = position[row["example_id"]]
        length = int(group["seq_len"][i])
        assert record["seq_len"] == length == row["seq_len"]
        stored = group["attn"][i][:, :, :length]
        np.testing.assert_array_equal(np.array(record["attn"], dtype=np.float16), stored)
        assert record["token_ids"] == group["tokens"][i][:length].tolist()
        assert record["tokens"] == [tokenizer.decode([t]) for t in record["token_ids"]]
        label = catalog(reported, "SELECT label FROM examples WHERE example_id = ?", [row["example_id"]])[
            "label"
        ].item()
        assert record["label"] == row["label"] == label
        for score in record["scores"]:
            assert (
                score["score"]
                == catalog(
                    reported,
                    "SELECT score FROM probe_scores WHERE result_id = ? AND example_id = ?",
                    [score["result_id"], row["example_id"]],
                )["score"].item()
            )
    scores = catalog(
        reported, "SELECT example_id, score FROM probe_scores WHERE result_id = ?", [page["featured"]["result_id"]]
    ).sort_values("score", ascending=False)
    assert [r["example_id"] for r in page["examples"]["highest scores"]] == scores["example_id"].head(3).tolist()


def test_length_histogram_and_store_summary_equal_the_catalog_and_the_files(reported):
    page = read_json(reported, FOLDER, "1_toy.json")
    features = catalog(
        reported, "SELECT f.seq_len, f.truncated, e.label FROM features f JOIN examples e USING (example_id)"
    )
    edges = page["lengths"]["edges"]
    for name, label in (("positive", 1), ("negative", 0)):
        lengths = features.loc[features["label"] == label, "seq_len"].to_numpy()
        counts = [int(((lengths >= lo) & (lengths < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:], strict=False)]
        assert page["lengths"][name] == counts and sum(counts) == len(lengths)
    assert page["lengths"]["n_truncated"] == int(features["truncated"].sum())
    (model,) = read_json(reported, "store.json")["models"]
    for split in model["splits"]:
        folder = published_folder(reported, split["split"])
        assert split["bytes_on_disk"] == sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert split["tokens"] == int(raw_split(reported, split["split"])["seq_len"][:].sum())
        assert split["build_seconds"] > 0
    assert model["identity"]["key"] == MODEL and model["n_probe_results"] == 6


def test_rerun_replaces_the_folder_whole_and_unknown_names_write_nothing(reported, tmp_path, capsys):
    project = Project(tmp_path / "copy")
    shutil.copytree(reported.root, project.root)
    stale = project.report_dir / "stale.txt"
    stale.write_text("from an older report")
    assert main(["--root", str(project.root), "report", "--datasets", "1_toy"]) == 0
    assert not stale.exists() and (project.report_dir / "index.html").is_file()
    assert [p.name for p in project.root.iterdir() if p.name.startswith(".report")] == []
    capsys.readouterr()
    out = tmp_path / "elsewhere"
    for args, expected in (
        (["--model", "random:gpt2-medium"], "no features of model 'random:gpt2-medium'"),
        (["--datasets", "2_nope"], "dataset '2_nope' is not in the catalog"),
        (["--hard-threshold", "nan"], "the hard threshold is an AUC in [0, 1]"),
    ):
        assert main(["--root", str(project.root), "report", "--out", str(out), *args]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err
    assert not out.exists()


def test_with_nothing_probed_the_report_says_what_to_run(tmp_path):
    project = built_toy_project(tmp_path / "p")
    assert main(["--root", str(project.root), "report"]) == 0
    index = (project.report_dir / "index.html").read_text()
    assert "No probe results for random:tiny yet" in index and "featstore probe --model random:tiny --baseline" in index
    assert (project.report_dir / "store.html").is_file()
    page = read_json(project, FOLDER, "1_toy.json")
    assert page["results"] == [] and page["examples"] == {} and sum(page["lengths"]["positive"]) > 0


def test_resolve_scope_defaults_to_everything_built(reported):
    scope = data.resolve_scope(reported, None, None, 0.8)
    assert scope.models == {MODEL: ["1_toy"]}
    loaded = data.load_model_data(reported, MODEL, ["1_toy"])
    assert len(loaded.results) == 6 and set(loaded.examples["split"]) == {"train", "test"}


def test_serve_answers_on_loopback_and_stops_on_ctrl_c(reported):
    command = [sys.executable, "-m", "featstore.cli", "--root", str(reported.root), "report", "--serve", "--port", "0"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url + "index.html", timeout=10) as response:
            assert response.status == 200 and b"featstore report" in response.read()
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=10) == 0
    finally:
        server.kill()
        server.stderr.close()


def test_an_older_catalog_is_upgraded_and_results_without_scores_still_render(reported, tmp_path, capsys):
    project = Project(tmp_path / "old")
    shutil.copytree(reported.root, project.root)
    with catalog_writer(project) as con:  # as a catalog written before intervals and scores were kept
        con.execute("DROP TABLE probe_scores")
        con.execute("DROP TABLE probe_head_weights")
        con.execute("ALTER TABLE probe_results DROP COLUMN roc_auc_ci_low")
        con.execute("ALTER TABLE probe_results DROP COLUMN roc_auc_ci_high")
        con.execute("DROP TABLE featstore_schema")  # kept since the schema was versioned
    capsys.readouterr()
    assert main(["--root", str(project.root), "report"]) == 0
    assert "the overview shows no ΔAUC against the baseline: 1_toy" in capsys.readouterr().err
    page = read_json(project, FOLDER, "1_toy.json")
    assert len(page["results"]) == 6 and page["roc"] == [] and page["examples"] == {}
    assert all(result["low"] is None and result["flagged"] is None for result in page["results"])


def test_out_never_replaces_a_folder_that_no_report_wrote(reported, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    for out, expected in (
        (precious, "was not written by featstore report"),
        (reported.root, "holds the project itself"),
        (reported.root.parent, "holds the project itself"),
    ):
        assert main(["--root", str(reported.root), "report", "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err
    assert (precious / "notes.txt").read_text() == "keep me" and (reported.store_dir / "catalog.duckdb").is_file()


def test_worker_processes_write_the_same_report_as_one_process(tmp_path, monkeypatch):
    from featstore.catalog.splits import SplitParams
    from featstore.datasets.cleaning import clean_datasets
    from featstore.datasets.registry import load_registry
    from featstore.extraction.build import build_features
    from featstore.extraction.plan import BuildSettings
    from featstore.project import init_project
    from featstore.report import site
    from tests.factories import registry_row, toy_raw, write_registry

    project = init_project(tmp_path / "p")
    project.raw_dir.mkdir(parents=True)
    toy_raw(150).to_csv(project.raw_dir / "toy.csv", index=False)
    write_registry(project, [registry_row(1, "a", "toy.csv"), registry_row(2, "b", "toy.csv")])
    clean_datasets(project, load_registry(project), SplitParams())
    build_features(project, MODEL, None, BuildSettings(device="cpu"))
    assert main(["--root", str(project.root), "probe", "--model", MODEL, "--aggregation", "first"]) == 0
    one = site.write_report(project, out=tmp_path / "one")
    monkeypatch.setattr(site, "DATASETS_PER_WORKER", 1)
    monkeypatch.setattr(site.os, "cpu_count", lambda: 2)
    two = site.write_report(project, out=tmp_path / "two")
    files = sorted(p.relative_to(one.folder) for p in (one.folder / "data").rglob("*.json"))
    assert len(files) == 2 + 2 + 2 * 9 and files == sorted(
        p.relative_to(two.folder) for p in (two.folder / "data").rglob("*.json")
    )
    for name in files:
        assert (one.folder / name).read_bytes() == (two.folder / name).read_bytes(), name
