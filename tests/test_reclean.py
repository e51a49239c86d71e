"""Re-cleaning keeps what did not change: features and probe results go only with changed examples, are named
first (asked on a terminal, --yes for scripts, refused otherwise) and their files leave the store."""

import io
import shutil

import pytest

from featstore.catalog.safe_sql import query_catalog
from featstore.catalog.splits import SplitParams
from featstore.cli import main
from featstore.datasets.cleaning import clean_datasets
from featstore.datasets.registry import load_registry
from featstore.extraction.build import build_features
from featstore.extraction.plan import BuildSettings
from featstore.project import init_project, open_project
from tests.builders import MODEL
from tests.factories import registry_row, toy_raw, write_registry

ROWS = [registry_row(1, "toy", "toy.csv"), registry_row(2, "other", "other.csv")]


def cleaned_and_built(project, limit: int):
    """Clean the two toy datasets into `project` and build random:tiny features of `limit` examples a split."""
    project.raw_dir.mkdir(parents=True)
    toy_raw(300).to_csv(project.raw_dir / "toy.csv", index=False)
    toy_raw(300, seed=1).to_csv(project.raw_dir / "other.csv", index=False)
    write_registry(project, ROWS)
    clean_datasets(project, load_registry(project), SplitParams())
    build_features(project, MODEL, None, BuildSettings(device="cpu", limit=limit))
    return project


@pytest.fixture(scope="module")
def two_built(tmp_path_factory):
    """Two cleaned datasets with random:tiny features (32 examples a split) and a baseline probe on each."""
    project = cleaned_and_built(init_project(tmp_path_factory.mktemp("reclean") / "p"), limit=32)
    assert main(["--root", str(project.root), "probe", "--model", MODEL, "--baseline"]) == 0
    return project


@pytest.fixture
def built(two_built, tmp_path):
    return open_project(shutil.copytree(two_built.root, tmp_path / "p"))


def clean(project, *extra):
    return main(["--root", str(project.root), "datasets", "clean", *extra])


def state(project, dataset):
    """The dataset's catalog rows that re-cleaning may drop, and its files in the store."""
    counts = [
        int(
            query_catalog(project.catalog_path, f"SELECT count(*) AS n FROM {table} WHERE dataset = ?", [dataset])["n"][
                0
            ]
        )
        for table in ("features", "feature_splits", "probe_results")
    ]
    files = {
        key: project.store.path(key).read_bytes()
        for prefix in (f"features.zarr/random-tiny/{dataset}", f"probes/random-tiny/{dataset}")
        for key in project.store.list(prefix)
    }
    return counts, files


def examples(project):
    return query_catalog(project.catalog_path, "SELECT * FROM examples ORDER BY example_id")


def flip_labels_of_other(project):
    write_registry(project, [ROWS[0], registry_row(2, "other", "other.csv", **{"Probe to extraction": "col == 0"})])


def test_overwrite_with_nothing_changed_keeps_everything_and_says_so(built, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    before = {d: state(built, d) for d in ("1_toy", "2_other")}
    assert before["1_toy"][0] == [64, 2, 1] and before["1_toy"][1]
    assert clean(built, "--overwrite") == 0
    assert {d: state(built, d) for d in ("1_toy", "2_other")} == before
    assert capsys.readouterr().err == (
        "featstore: re-cleaned 2 dataset(s): no train or test example changed, features and probe results kept\n"
    )


def test_clean_with_nothing_to_do_says_so_in_one_line(built, capsys):
    assert clean(built) == 0
    assert capsys.readouterr().err.startswith("featstore: nothing to do: every dataset is cleaned")


def test_one_changed_row_drops_only_its_dataset_and_deletes_its_files(built, capsys):
    kept = state(built, "1_toy")
    counts, files = state(built, "2_other")
    assert counts == [64, 2, 1] and any(k.startswith("probes/") for k in files)
    flip_labels_of_other(built)
    assert clean(built, "--overwrite", "--yes") == 0
    assert state(built, "1_toy") == kept
    assert state(built, "2_other") == ([0, 0, 0], {})
    assert not (built.store_dir / "features.zarr/random-tiny/2_other").exists()
    assert not (built.store_dir / "probes/random-tiny/2_other").exists()
    freed = sum(len(data) for data in files.values())
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith(
        "featstore: examples changed, would drop 2_other: features random:tiny test, "
        "random:tiny train; 1 probe result(s) (random:tiny logreg resid layers "
    )
    assert err[1] == (
        f"featstore: dropped 2_other: random:tiny test, random:tiny train; 1 probe result(s); "
        f"{freed / 1000:.1f} kB freed"
    )
    relabelled = examples(built).query("dataset == '2_other'").sort_values("row")["label"].to_numpy()
    assert (relabelled == 1 - toy_raw(300, seed=1)["label"].to_numpy()).all()


def test_a_script_without_yes_is_refused_and_nothing_changes(built, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))  # not a terminal: never read
    before = (state(built, "2_other"), examples(built), built.cleaned_path("2_other").read_bytes())
    flip_labels_of_other(built)
    assert clean(built) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("featstore: examples changed, would drop 2_other: ")
    assert err[1] == (
        "featstore: error: 1 changed dataset(s) would lose the features and probe results listed "
        "above; nothing was changed: pass --yes to drop them"
    )
    after = (state(built, "2_other"), examples(built), built.cleaned_path("2_other").read_bytes())
    assert after[0] == before[0] and after[1].equals(before[1]) and after[2] == before[2]
    assert sorted(p.name for p in built.cleaned_dir.iterdir()) == ["1_toy.csv", "2_other.csv"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("answer, code", [("n\n", 1), ("\n", 1), ("y\n", 0)])
def test_a_terminal_is_asked(built, capsys, monkeypatch, answer, code):
    monkeypatch.setattr("sys.stdin", Terminal(answer))
    flip_labels_of_other(built)
    assert clean(built) == code
    err = capsys.readouterr().err
    assert "Drop them? [y/N] " in err
    assert state(built, "2_other")[0] == ([0, 0, 0] if code == 0 else [64, 2, 1])
    if code:
        assert err.endswith("featstore: error: nothing was changed: the features and probe results above are kept\n")


def test_a_new_row_giving_the_same_examples_keeps_features_without_asking(built, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    before = state(built, "2_other")
    write_registry(built, [ROWS[0], registry_row(2, "other", "other.csv", **{"Probe to extraction": "col == 1"})])
    assert clean(built) == 0  # the row changed (so it is re-cleaned), its examples did not
    assert state(built, "2_other") == before
    assert "no train or test example changed" in capsys.readouterr().err


def test_changed_split_options_drop_through_the_api_without_confirm(built):
    outcome = clean_datasets(built, load_registry(built), SplitParams(seed=7))
    assert outcome.cleaned == outcome.changed == ["1_toy", "2_other"]
    assert [drop.dataset for drop in outcome.dropped] == ["1_toy", "2_other"]
    assert state(built, "1_toy") == ([0, 0, 0], {}) and not (built.store_dir / "features.zarr").exists()


def test_import_sae_probes_overwrite_keeps_unchanged_and_asks_before_dropping(tmp_path, capsys, monkeypatch):
    from tests.test_sae_probes_import import fake_data_files

    data_dir = tmp_path / "unpacked" / "sae_probes" / "data"
    for name, payload in fake_data_files().items():
        (data_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / name).write_bytes(payload)
    project = init_project(tmp_path / "p")
    command = [
        "--root",
        str(project.root),
        "datasets",
        "import-sae-probes",
        "--source",
        str(tmp_path / "unpacked"),
        "--only",
        "glue_toy",
        "--max-train",
        "64",
    ]
    assert main(command) == 0
    build_features(project, MODEL, None, BuildSettings(device="cpu", limit=16))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    before = state(project, "87_glue_toy")
    assert before[0] == [32, 2, 0]
    capsys.readouterr()
    assert main([*command, "--overwrite"]) == 0
    assert state(project, "87_glue_toy") == before
    assert "no train or test example changed" in capsys.readouterr().err
    assert main([*command, "--overwrite", "--seed", "1"]) == 1
    assert "pass --yes to drop them" in capsys.readouterr().err and state(project, "87_glue_toy") == before
    assert main([*command, "--overwrite", "--seed", "1", "--yes"]) == 0
    assert (
        "featstore: dropped 87_glue_toy: random:tiny test, random:tiny train; 0 probe result(s)"
        in capsys.readouterr().err
    )
    assert state(project, "87_glue_toy") == ([0, 0, 0], {})


def test_a_drop_in_a_bucket_deletes_the_dropped_objects_only(moto_s3, monkeypatch, tmp_path, capsys):
    from tests.test_object_store import bucket_keys

    moto_s3.use_env(monkeypatch)
    url = moto_s3.bucket_url()
    project = cleaned_and_built(init_project(tmp_path / "p", url), limit=16)
    before = bucket_keys(moto_s3, url)
    other = [key for key in before if key.startswith("features.zarr/random-tiny/2_other/")]
    assert other and any(key.startswith("features.zarr/random-tiny/1_toy/") for key in before)
    flip_labels_of_other(project)
    capsys.readouterr()
    assert main(["--root", str(project.root), "datasets", "clean", "--yes"]) == 0
    after = bucket_keys(moto_s3, url)
    assert not any(key.startswith("features.zarr/random-tiny/2_other/") for key in after)
    assert {k for k in before if k.startswith("features.zarr/random-tiny/1_toy/")} <= set(after)
    assert (
        "featstore: dropped 2_other: random:tiny test, random:tiny train; 0 probe result(s)" in capsys.readouterr().err
    )
