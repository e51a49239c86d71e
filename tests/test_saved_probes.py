"""Saved probes are arrays plus checked plain values: each family round-trips exactly, a malformed file is one
line, and no file in a store (a pickle payload, even with the catalog edited to match it) runs code on load."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from featstore.api import Store
from featstore.catalog.database import catalog_writer
from featstore.cli import main
from featstore.errors import FeatstoreError
from probes import (
    AttentionRowProbe,
    LogisticRegressionProbe,
    MassMeanProbe,
    SavedProbeError,
    StackedProbe,
    load_probe,
    probe_bytes,
    save_probe,
    saved,
)
from tests.builders import MODEL
from tests.object_servers import bucket_and_prefix
from tests.test_attention_row import planted


def matrix_problem(n: int = 160, d: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] + rng.normal(size=n) > 0).astype(np.int64)


MATRIX_PROBES = {
    "logreg": LogisticRegressionProbe(),
    "logreg-l1-standardised": LogisticRegressionProbe(
        penalty="l1", standardize=True, Cs=[0.01, 0.1, 1.0], class_weight={0: 1.0, 1: 2.5}, random_state=None
    ),
    "mass-mean": MassMeanProbe(),
    "mass-mean-lda": MassMeanProbe(tilt="lda"),
    "mass-mean-lda-fixed": MassMeanProbe(tilt="lda", shrinkage=0.3),
}


def assert_same_probe(probe, loaded, X):
    assert type(loaded) is type(probe)
    assert repr(loaded.get_params()) == repr(probe.get_params())
    np.testing.assert_array_equal(loaded.decision_function(X), probe.decision_function(X))
    np.testing.assert_array_equal(loaded.predict(X), probe.predict(X))
    np.testing.assert_array_equal(loaded.classes_, probe.classes_)
    assert loaded.chosen_hyperparameters() == probe.chosen_hyperparameters()


@pytest.mark.parametrize("name", MATRIX_PROBES)
def test_each_matrix_family_round_trips_exactly(name, tmp_path):
    X, y = matrix_problem()
    probe = MATRIX_PROBES[name].fit(X, y)
    save_probe(probe, tmp_path / "probe.safetensors")
    assert_same_probe(probe, load_probe(tmp_path / "probe.safetensors"), X)
    np.testing.assert_array_equal(load_probe(probe_bytes(probe)).feature_weights(), probe.feature_weights())


def test_string_labels_and_dataframe_feature_names_round_trip():
    import pandas as pd

    X, y = matrix_problem()
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    probe = LogisticRegressionProbe().fit(frame, np.where(y, "yes", "no"))
    loaded = load_probe(probe_bytes(probe))
    assert loaded.classes_.tolist() == ["no", "yes"] and loaded.feature_names_in_.tolist() == frame.columns.tolist()
    np.testing.assert_array_equal(loaded.decision_function(frame), probe.decision_function(frame))


def test_the_meta_probe_with_mixed_bases_round_trips_exactly():
    X, y = matrix_problem(d=20)
    parts = [X[:, :8], X[:, 8:]]
    probe = StackedProbe(base_probes=[MassMeanProbe(tilt="lda"), LogisticRegressionProbe()], n_folds=3).fit(parts, y)
    loaded = load_probe(probe_bytes(probe))
    assert [type(b) for b in loaded.bases_] == [MassMeanProbe, LogisticRegressionProbe]
    np.testing.assert_array_equal(loaded.decision_function(parts), probe.decision_function(parts))
    assert loaded.chosen_hyperparameters() == probe.chosen_hyperparameters()
    default = StackedProbe(n_folds=3).fit(parts, y)
    np.testing.assert_array_equal(
        load_probe(probe_bytes(default)).decision_function(parts), default.decision_function(parts)
    )


@pytest.mark.parametrize("use_tokens", [True, False])
def test_the_attention_row_probe_round_trips_exactly(use_tokens):
    rows, y = planted("token", 120, seed=3)
    probe = AttentionRowProbe(max_epochs=2, patience=2, use_tokens=use_tokens, log_dir=None).fit(rows, y)
    loaded = load_probe(probe_bytes(probe))
    np.testing.assert_array_equal(loaded.decision_function(rows), probe.decision_function(rows))
    np.testing.assert_array_equal(loaded.head_importance(), probe.head_importance())
    np.testing.assert_array_equal(loaded.position_weights(), probe.position_weights())
    assert loaded.chosen_hyperparameters() == probe.chosen_hyperparameters()
    assert set(loaded.state_) == set(probe.state_) and (loaded.vocab_size_ > 0) == use_tokens


def fitted_logreg():
    X, y = matrix_problem()
    return LogisticRegressionProbe().fit(X, y)


def crafted(probe, edit=None, arrays_edit=None) -> bytes:
    """A probe file of `probe` whose document and arrays were edited (as a hostile writer could)."""
    data = probe_bytes(probe)
    document = saved._parse(data)[0]
    arrays = safetensors.numpy.load(data)
    if edit:
        edit(document)
    if arrays_edit:
        arrays_edit(arrays)
    return safetensors.numpy.save(arrays, metadata={"featstore": json.dumps(document)})


class Marker:
    """A pickle payload: unpickling it creates the file `path`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def payload(marker: Path) -> bytes:
    """Pickled bytes that create `marker` when unpickled, checked to be live (then the marker is removed)."""
    data = pickle.dumps(Marker(marker))
    pickle.loads(data)
    assert marker.exists()
    marker.unlink()
    return data


def set_param(name, value):
    return lambda document: document["probe"]["params"].__setitem__(name, value)


def set_fitted(name, value):
    return lambda document: document["probe"]["fitted"].__setitem__(name, value)


def huge_header() -> bytes:
    return (2**40).to_bytes(8, "little") + b"{}"


MALFORMED = {
    "a pickle": (lambda tmp: payload(tmp / "marker"), "not a probe file"),
    "empty": (lambda tmp: b"", "not a probe file"),
    "a header longer than the file": (lambda tmp: huge_header(), "not a probe file"),
    "bad JSON": (lambda tmp: (9).to_bytes(8, "little") + b"{not json", "unreadable header"),
    "no metadata": (lambda tmp: safetensors.numpy.save({"a": np.zeros(2)}), "no featstore-probe document"),
    "bad JSON document": (
        lambda tmp: safetensors.numpy.save({"a": np.zeros(2)}, metadata={"featstore": "{"}),
        "unreadable header",
    ),
    "a newer version": (lambda tmp: crafted(fitted_logreg(), lambda d: d.__setitem__("version", 3)), "version 3"),
    "an unknown family": (
        lambda tmp: crafted(fitted_logreg(), lambda d: d["probe"].__setitem__("family", "os.system")),
        "unknown probe family 'os.system'",
    ),
    "a family given as a class path": (
        lambda tmp: crafted(
            fitted_logreg(), lambda d: d["probe"].__setitem__("family", {"module": "os", "name": "system"})
        ),
        "unknown probe family",
    ),
    "an unknown parameter": (
        lambda tmp: crafted(fitted_logreg(), set_param("__class__", "x")),
        "unknown ['__class__']",
    ),
    "a parameter of the wrong type": (lambda tmp: crafted(fitted_logreg(), set_param("max_iter", "10")), "max_iter"),
    "a probe object as a parameter": (
        lambda tmp: crafted(fitted_logreg(), set_param("penalty", {"probe": {}})),
        "probe: missing",
    ),
    "a bad penalty": (lambda tmp: crafted(fitted_logreg(), set_param("penalty", "l3")), "penalty must be one of"),
    "a huge integer": (lambda tmp: crafted(fitted_logreg(), set_fitted("n_features_in_", 10**30)), "n_features_in_"),
    "one class": (
        lambda tmp: crafted(fitted_logreg(), set_fitted("classes_", {"values": [1, 1], "dtype": "int64"})),
        "two different labels",
    ),
    "an object dtype": (
        lambda tmp: crafted(fitted_logreg(), set_fitted("classes_", {"values": [0, 1], "dtype": "O"})),
        "classes_ dtype",
    ),
    "a wrong shape": (
        lambda tmp: crafted(fitted_logreg(), arrays_edit=lambda a: a.__setitem__("coef_", np.zeros((1, 3)))),
        "coef_ must be",
    ),
    "a missing array": (
        lambda tmp: crafted(fitted_logreg(), arrays_edit=lambda a: a.pop("intercept_")),
        "intercept_ is missing",
    ),
    "an integer array": (
        lambda tmp: crafted(fitted_logreg(), arrays_edit=lambda a: a.__setitem__("coef_", np.zeros((1, 12), np.int64))),
        "float32/float64",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_probe_file_is_one_line(case, tmp_path):
    make, message = MALFORMED[case]
    data = make(tmp_path)
    with pytest.raises(SavedProbeError) as raised:
        load_probe(data)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "marker").exists()


def test_a_file_or_header_over_its_bound_is_refused_before_parsing(monkeypatch):
    data = probe_bytes(fitted_logreg())
    monkeypatch.setattr(saved, "MAX_BYTES", len(data) - 1)
    with pytest.raises(SavedProbeError, match="larger than"):
        load_probe(data)
    monkeypatch.setattr(saved, "MAX_BYTES", len(data))
    monkeypatch.setattr(saved, "MAX_HEADER_BYTES", 64)
    with pytest.raises(SavedProbeError, match="bounded size"):
        load_probe(data)


def test_an_attention_row_file_whose_parameters_imply_other_shapes_or_a_huge_network_is_refused():
    rows, y = planted("token", 120, seed=3)
    probe = AttentionRowProbe(max_epochs=1, patience=1).fit(rows, y)
    for edit, message in [
        (set_param("readers_per_head", 1000), "state_.0.basis_weights must be"),
        (set_param("readers_per_head", 10**9), "readers_per_head"),
        (set_fitted("vocab_size_", 2**31), "state_.0.embedding.weight must be"),
        (set_param("batch_size", 2**40), "batch_size"),
        (set_fitted("n_layers_", 7), "not n_layers_ x n_heads_"),
    ]:
        with pytest.raises(SavedProbeError, match=message):
            load_probe(crafted(probe, edit))
    with pytest.raises(SavedProbeError, match="network state holds"):
        load_probe(crafted(probe, arrays_edit=lambda a: a.pop("state_.0.readout.bias")))


def test_meta_probes_nested_too_deep_or_with_wrong_parts_are_refused():
    X, y = matrix_problem(d=20)
    probe = StackedProbe(n_folds=3).fit([X[:, :8], X[:, 8:]], y)
    deep = {"family": "stacked", "params": {"base_probes": None, "final_probe": None, "n_folds": 3, "random_state": 0}}
    for _ in range(5):
        deep["params"]["final_probe"] = {"probe": json.loads(json.dumps(deep))}
    with pytest.raises(SavedProbeError, match="nested deeper"):
        load_probe(crafted(probe, set_param("final_probe", deep["params"]["final_probe"])))
    with pytest.raises(SavedProbeError, match="number of sub-probes"):
        load_probe(crafted(probe, lambda d: d["probe"]["parts"].__setitem__("bases_", [])))
    with pytest.raises(SavedProbeError, match="bases_ must be"):
        load_probe(
            crafted(
                probe,
                lambda d: d["probe"]["parts"].__setitem__("bases_", d["probe"]["parts"]["final_"]),
                lambda a: a.update({f"bases_.{k[7:]}": v for k, v in list(a.items()) if k.startswith("final_.")}),
            )
        )
    with pytest.raises(SavedProbeError, match="one per base probe"):
        load_probe(
            crafted(probe, lambda d: d["probe"]["parts"].__setitem__("bases_", d["probe"]["parts"]["bases_"][:1]))
        )


# The store: every command and API that reads probes, with hostile probe files in place.

LENGTH_PROBE = ["--feature", "length", "--probe", "logreg"]


def probe_command(project, *args):
    return main(["--root", str(project.root), "probe", "--model", MODEL, *LENGTH_PROBE, *args])


def only_row(project):
    rows = Store(project).sql("SELECT * FROM probe_results")
    assert len(rows) == 1
    return rows.iloc[0]


def every_reader(project, out: Path, capsys) -> dict[str, tuple]:
    """Run each command and API that reads probes or their rows; (exit code or error, stderr) by name."""
    root = ["--root", str(project.root)]
    outcomes = {}
    for name, argv in [
        ("overwrite-eval", [*root, "probe", "--model", MODEL, *LENGTH_PROBE, "--overwrite-eval"]),
        ("results", [*root, "results"]),
        ("report", [*root, "report", "--out", str(out)]),
    ]:
        outcomes[name] = (main(argv), capsys.readouterr().err)
    try:
        Store(project).probe(only_row(project)["result_id"])
        outcomes["api"] = (0, "")
    except FeatstoreError as error:
        outcomes["api"] = ("FeatstoreError", str(error))
    return outcomes


def test_a_pickle_payload_as_the_saved_probe_never_runs(toy_copy, tmp_path, capsys):
    marker = tmp_path / "marker"
    assert probe_command(toy_copy) == 0
    row = only_row(toy_copy)
    (toy_copy.store_dir / row["probe_path"]).write_bytes(payload(marker))
    outcomes = every_reader(toy_copy, tmp_path / "site", capsys)
    assert not marker.exists()
    code, err = outcomes["overwrite-eval"]
    assert code == 1 and err.count("\n") == 1 and "cannot be loaded: not a probe file" in err
    assert outcomes["results"][0] == 0 and outcomes["report"][0] == 0
    assert outcomes["api"][0] == "FeatstoreError" and "not a probe file" in outcomes["api"][1]
    assert only_row(toy_copy)["probe_path"] == row["probe_path"]  # nothing was rewritten


def test_an_old_joblib_row_is_refitted_never_loaded(toy_copy, tmp_path, capsys):
    marker = tmp_path / "marker"
    assert probe_command(toy_copy) == 0
    row = only_row(toy_copy)
    old = row["probe_path"].replace(".safetensors", ".joblib")
    (toy_copy.store_dir / old).write_bytes(payload(marker))
    (toy_copy.store_dir / row["probe_path"]).unlink()
    with catalog_writer(toy_copy) as con:
        con.execute("UPDATE probe_results SET probe_path = ?", [old])
    capsys.readouterr()
    with pytest.raises(FeatstoreError, match="pickle written by an older featstore"):
        Store(toy_copy).probe(row["result_id"])
    assert main(["--root", str(toy_copy.root), "results"]) == 0
    assert main(["--root", str(toy_copy.root), "report", "--out", str(tmp_path / "site")]) == 0
    capsys.readouterr()
    assert probe_command(toy_copy, "--overwrite-eval") == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 saved probe(s) of this run are pickles" in err and "refitting" in err
    refitted = only_row(toy_copy)
    assert refitted["probe_path"].endswith(".safetensors") and refitted["roc_auc"] == pytest.approx(row["roc_auc"])
    assert not (toy_copy.store_dir / old).exists() and not marker.exists()
    assert Store(toy_copy).probe(refitted["result_id"]).n_features_in_ == 2
    assert probe_command(toy_copy) == 0 and capsys.readouterr().err.startswith("featstore: nothing to do:")


def test_a_saved_probe_of_another_family_is_refused_by_overwrite_eval(toy_copy, capsys):
    assert probe_command(toy_copy) == 0
    row = only_row(toy_copy)
    X, y = matrix_problem(d=2)
    (toy_copy.store_dir / row["probe_path"]).write_bytes(probe_bytes(MassMeanProbe().fit(X, y)))
    assert probe_command(toy_copy, "--overwrite-eval") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a MassMeanProbe, not a logreg probe" in err


def test_no_module_of_featstore_or_probes_unpickles():
    """What the repository's before-stop hook checks, so a new loader cannot slip in."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    found = subprocess.run(
        [
            "grep",
            "-rnE",
            r"joblib\.load|pickle\.loads?\(|allow_pickle=True|torch\.load\(",
            str(root / "featstore"),
            str(root / "probes"),
        ],
        capture_output=True,
        text=True,
    ).stdout
    unsafe = [line for line in found.splitlines() if not re.search(r"torch\.load\(.*weights_only=True", line)]
    assert unsafe == []


def test_a_saved_tokenizer_naming_custom_code_never_runs_it(toy_copy, tmp_path, capsys):
    from featstore.store.layout import tokenizer_path

    marker = tmp_path / "marker"
    assert probe_command(toy_copy) == 0
    folder = tokenizer_path(toy_copy.tokenizers_dir, MODEL)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(auto_map={"AutoTokenizer": [None, "evil.Tokenizer"]}, tokenizer_class="Tokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PreTrainedTokenizerFast as Tokenizer\n"
    )
    capsys.readouterr()
    assert main(["--root", str(toy_copy.root), "report", "--out", str(tmp_path / "site")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "saved tokenizer" in err and "custom code" in err
    assert not marker.exists()


def test_a_pickle_payload_in_a_bucket_never_runs_on_a_clone(moto_s3, monkeypatch, tmp_path, capsys):
    from featstore.extraction.build import build_features
    from featstore.extraction.plan import BuildSettings
    from featstore.project import open_project
    from tests.builders import toy_project

    moto_s3.use_env(monkeypatch)
    url, marker = moto_s3.bucket_url(), tmp_path / "marker"
    project = toy_project(tmp_path / "bucket", store=url)
    build_features(project, MODEL, None, BuildSettings(device="cpu"))
    assert probe_command(project) == 0
    bucket, prefix = bucket_and_prefix(url)
    moto_s3.client().put_object(Bucket=bucket, Key=f"{prefix}/{only_row(project)['probe_path']}", Body=payload(marker))
    assert main(["clone", url, str(tmp_path / "elsewhere")]) == 0
    clone = open_project(tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(["--root", str(clone.root), "probe", "--model", MODEL, *LENGTH_PROBE, "--overwrite-eval"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be loaded: not a probe file" in err and url in err
    with pytest.raises(FeatstoreError, match="not a probe file"):
        Store(clone).probe(only_row(clone)["result_id"])
    assert not marker.exists()


def test_a_catalog_probe_path_naming_another_stored_file_is_never_deleted(tmp_path):
    from featstore.errors import FeatstoreError
    from featstore.probing.probe_files import remove_fit
    from featstore.probing.saved_probes import is_probe_key
    from featstore.project import Project

    project = Project(tmp_path)
    victim = project.store_dir / "features.zarr" / "m" / "d" / "train" / "zarr.json"
    victim.parent.mkdir(parents=True)
    victim.write_text("{}")
    for key in [
        "features.zarr/m/d/train/zarr.json",
        "probes/../features.zarr/x.safetensors",
        "probes/m/d.safetensors",
        "probes/m/d/r-1.safetensors/../../x",
    ]:
        assert not is_probe_key(key)
        with pytest.raises(FeatstoreError, match="no probe file is"):
            remove_fit(project, key)
    assert victim.read_text() == "{}"
    assert is_probe_key("probes/m/d/r-0123456789ab.safetensors") and is_probe_key("probes/m/d/r-1.joblib")
