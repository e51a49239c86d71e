"""A damaged store never reads as different numbers: every read path returns the original values or fails in one
line; `featstore verify` finds the damage and `featstore build --repair` rewrites only what is damaged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from featstore.api import Store
from featstore.catalog.database import catalog_writer
from featstore.cli import main
from featstore.errors import FeatstoreError
from featstore.extraction.build import LEGACY_BATCH_SLACK, default_batch_slack
from featstore.project import Project
from featstore.store.writer import SplitWriter
from tests.builders import MODEL, built_toy_project, new_version_folder, published_folder

ARRAYS = ("attn", "resid", "tokens", "seq_len", "example_id")
DAMAGES = ("delete", "truncate", "flip")
TARGETS = (*ARRAYS, "attn/zarr.json", "zarr.json")
PROBE_ARGS = {"resid": ["--feature", "resid"], "tokens": ["--probe", "attention-row"]}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Project:
    """A built toy project (train: two shards) that no test changes; tests damage copies of it."""
    return built_toy_project(tmp_path_factory.mktemp("integrity") / "p")


@pytest.fixture
def copy(pristine, tmp_path) -> Project:
    return Project(Path(shutil.copytree(pristine.root, tmp_path / "copy")))


def folder(project: Project, split: str = "train") -> Path:
    return published_folder(project, split)


def stored(project: Project, split: str = "train") -> dict[str, np.ndarray]:
    """Every array of a split, read with zarr alone."""
    group = zarr.open_group(folder(project, split), mode="r")
    return {name: group[name][:] for name in ARRAYS}


def data_files(project: Project) -> dict[str, bytes]:
    """Every file of the train split but its root document (whose manifest lists them in write order)."""
    root = folder(project)
    return {
        str(f.relative_to(root)): f.read_bytes()
        for f in sorted(root.rglob("*"))
        if f.is_file() and f != root / "zarr.json"
    }


def damage(project: Project, target: str, how: str) -> str:
    """Delete, truncate or flip one byte of a file of the train split; returns its key. A data file is the last
    chunk file of its array (a second shard where there is one), its middle byte flipped; a metadata file gets a
    flip that changes its meaning (fill value 0 -> 1, zarr_format 3 -> 2)."""
    root = folder(project)
    key = (
        target
        if target.endswith("zarr.json")
        else sorted(str(f.relative_to(root)) for f in (root / target / "c").rglob("*") if f.is_file())[-1]
    )
    path = root / key
    data = bytearray(path.read_bytes())
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        marker = {"attn/zarr.json": b'"fill_value": ', "zarr.json": b'"zarr_format": '}.get(key)
        at = data.index(marker) + len(marker) if marker else len(data) // 2
        data[at] ^= 0x01 if marker else 0xFF
        path.write_bytes(bytes(data))
    return key


def view_reads(project: Project) -> dict[str, np.ndarray]:
    """What the view path gives for the train split: every array and a one-layer aggregation."""
    store = Store(project)
    view = store.view("1_toy", "train")
    read = {name: view[name].values for name in ("attn", "resid", "tokens", "seq_len", "example_id")}
    read["entropy_L0"] = store.view("1_toy", "train", layers=[0])["attn"].masked.entropy().values
    return read


def assert_one_line_error(err: FeatstoreError) -> None:
    message = str(err)
    assert "\n" not in message and "1_toy/train" in message, message


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    except Exception as err:  # a traceback: what the user must never see
        pytest.fail(f"`featstore {' '.join(argv)}` raised {type(err).__name__}: {err}")
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str) -> None:
    lines = [line for line in err.splitlines() if not line.startswith("featstore: warning:")]
    assert len(lines) == 1 and lines[0].startswith("featstore: error: "), err
    assert "Traceback" not in err


_probe_results: dict[str, list] = {}


def probe_results(pristine: Project, tmp_path_factory, args: tuple[str, ...]) -> list:
    """The test AUCs a probe run gives on an undamaged copy (fitted only when a damaged run succeeds)."""
    if args not in _probe_results:
        reference = Project(Path(shutil.copytree(pristine.root, tmp_path_factory.mktemp("reference") / "p")))
        assert main(["--root", str(reference.root), "probe", "--model", MODEL, *args]) == 0
        _probe_results[args] = (
            Store(reference).sql("SELECT result_id, roc_auc FROM probe_results ORDER BY 1").values.tolist()
        )
    return _probe_results[args]


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("target", TARGETS)
def test_damaged_store_reads_original_values_or_fails_in_one_line(
    pristine, copy, target, how, capsys, tmp_path_factory
):
    original = view_reads(pristine)
    key = damage(copy, target, how)

    try:
        read = view_reads(copy)
    except FeatstoreError as err:
        assert_one_line_error(err)
    else:
        for name, values in original.items():
            np.testing.assert_array_equal(read[name], values, err_msg=f"{name} changed after {how} of {key}")

    args = ("probe", "--model", MODEL, *PROBE_ARGS.get(target, []))
    code, _, err = run_cli(capsys, "--root", str(copy.root), *args)
    if code == 0:
        fitted = Store(copy).sql("SELECT result_id, roc_auc FROM probe_results ORDER BY 1").values.tolist()
        assert fitted == probe_results(pristine, tmp_path_factory, args[3:]), (
            f"probe results changed after {how} of {key}"
        )
    else:
        assert code == 1
        assert_one_error_line(err)

    code, out, err = run_cli(capsys, "--root", str(copy.root), "verify")
    assert code == 1, f"verify missed the {how} of {key}"
    assert_one_error_line(err)
    assert f"1_toy/train of {MODEL}: {key}" in out or key == "zarr.json" and "zarr.json" in out, out
    assert f"build --repair --model {MODEL} --datasets 1_toy" in err


def test_verify_is_quiet_and_exits_0_on_a_healthy_store(pristine, capsys):
    assert run_cli(capsys, "--root", str(pristine.root), "verify") == (0, "", "")
    assert run_cli(capsys, "--root", str(pristine.root), "verify", "--model", MODEL, "--datasets", "1_toy") == (
        0,
        "",
        "",
    )


def test_verify_refuses_a_model_with_nothing_built(pristine, capsys):
    code, _, err = run_cli(capsys, "--root", str(pristine.root), "verify", "--model", "random:gpt2-medium")
    assert (
        code == 1
        and "no features of model 'random:gpt2-medium' in this store (models with features: random:tiny)" in err
    )
    assert_one_error_line(err)


@pytest.mark.parametrize("target", ["attn", "tokens"])
def test_repair_rewrites_only_the_damaged_shard_byte_for_byte(pristine, copy, target, capsys, monkeypatch):
    key = damage(copy, target, "delete")
    written = []
    real_write = SplitWriter.record_shard
    monkeypatch.setattr(
        SplitWriter, "record_shard", lambda self, shard, *a: (written.append(shard), real_write(self, shard, *a))
    )
    results_before = Store(copy).sql("SELECT count(*) AS n FROM features")["n"][0]

    assert run_cli(capsys, "--root", str(copy.root), "build", "--model", MODEL, "--device", "cpu", "--repair")[0] == 0

    assert written == [int(key.split("/")[2])], "only the damaged shard is extracted again"
    assert data_files(copy) == data_files(pristine)
    assert (
        json.loads((folder(copy) / "zarr.json").read_bytes())["attributes"]["manifest"]
        == json.loads((folder(pristine) / "zarr.json").read_bytes())["attributes"]["manifest"]
    )
    assert run_cli(capsys, "--root", str(copy.root), "verify") == (0, "", "")
    assert Store(copy).sql("SELECT count(*) AS n FROM features")["n"][0] == results_before
    for name, values in stored(pristine).items():
        np.testing.assert_array_equal(view_reads(copy)[name], values)


def test_a_split_recorded_before_the_batch_slack_was_named_is_repaired_in_its_own_batches(tmp_path, capsys):
    """Splits recorded without `batch_slack` were batched with LEGACY_BATCH_SLACK; a repair on the CPU (whose default
    slack is another) must batch them that way, or the repaired shard's rows differ in their last bits."""
    legacy = built_toy_project(tmp_path / "legacy", batch_slack=LEGACY_BATCH_SLACK)
    assert default_batch_slack(torch.device("cpu")) != LEGACY_BATCH_SLACK
    with catalog_writer(legacy) as con:
        for (settings,) in con.execute("SELECT DISTINCT settings FROM feature_splits").fetchall():
            unnamed = {name: value for name, value in json.loads(settings).items() if name != "batch_slack"}
            con.execute("UPDATE feature_splits SET settings = ? WHERE settings = ?", [json.dumps(unnamed), settings])
    damaged = Project(Path(shutil.copytree(legacy.root, tmp_path / "damaged")))
    damage(damaged, "attn", "delete")
    assert (
        run_cli(capsys, "--root", str(damaged.root), "build", "--model", MODEL, "--device", "cpu", "--repair")[0] == 0
    )
    assert data_files(damaged) == data_files(legacy)


@pytest.mark.parametrize("target", ["zarr.json", "seq_len"])
def test_repair_rebuilds_a_split_whose_metadata_or_row_index_is_damaged(pristine, copy, target, capsys):
    damage(copy, target, "flip")
    assert run_cli(capsys, "--root", str(copy.root), "build", "--model", MODEL, "--device", "cpu", "--repair")[0] == 0
    assert data_files(copy) == data_files(pristine)
    assert run_cli(capsys, "--root", str(copy.root), "verify") == (0, "", "")


def test_a_split_in_the_old_format_is_refused_reported_and_rebuilt_by_repair(pristine, copy, capsys):
    root = folder(copy) / "zarr.json"
    document = json.loads(root.read_bytes())
    for name in ("manifest", "seal"):
        del document["attributes"][name]
    document["attributes"]["format"] = 1
    root.write_text(json.dumps(document))

    with pytest.raises(FeatstoreError, match="format 1") as err:
        Store(copy).view("1_toy", "train")
    assert_one_line_error(err.value)
    code, out, err = run_cli(capsys, "--root", str(copy.root), "verify")
    assert code == 1 and "format 1" in out
    assert_one_error_line(err)

    assert run_cli(capsys, "--root", str(copy.root), "build", "--model", MODEL, "--device", "cpu", "--repair")[0] == 0
    assert data_files(copy) == data_files(pristine)
    assert run_cli(capsys, "--root", str(copy.root), "verify") == (0, "", "")


def test_repair_leaves_a_healthy_store_alone(pristine, copy, capsys, monkeypatch):
    monkeypatch.setattr(SplitWriter, "record_shard", lambda *a: pytest.fail("a healthy shard was rewritten"))
    assert run_cli(capsys, "--root", str(copy.root), "build", "--model", MODEL, "--device", "cpu", "--repair")[0] == 0


def test_verify_names_the_options_a_split_was_built_with_and_repair_takes_them(copy, capsys):
    assert (
        run_cli(
            capsys,
            "--root",
            str(copy.root),
            "build",
            "--model",
            MODEL,
            "--device",
            "cpu",
            "--overwrite",
            "--limit",
            "40",
        )[0]
        == 0
    )
    damage(copy, "attn", "flip")
    code, _, err = run_cli(capsys, "--root", str(copy.root), "verify")
    command = f"featstore build --repair --model {MODEL} --limit 40 --datasets 1_toy"
    assert code == 1 and command in err
    code, _, err = run_cli(capsys, "--root", str(copy.root), "build", "--model", MODEL, "--repair")
    assert code == 1 and "repair them with the options they were built with" in err
    assert run_cli(capsys, "--root", str(copy.root), *command.split()[1:], "--device", "cpu")[0] == 0
    assert run_cli(capsys, "--root", str(copy.root), "verify") == (0, "", "")


def test_report_on_a_damaged_store_is_one_line(copy, capsys):
    damage(copy, "attn/zarr.json", "delete")
    code, _, err = run_cli(capsys, "--root", str(copy.root), "report")
    assert code == 1 and "attn/zarr.json is missing" in err
    assert_one_error_line(err)


def test_a_build_killed_before_the_format_change_starts_over_in_the_new_format(pristine, copy, capsys):
    building = new_version_folder(copy, "train")
    shutil.copytree(folder(copy), building)
    document = json.loads((building / "zarr.json").read_bytes())
    document["attributes"] = {k: v for k, v in document["attributes"].items() if k not in ("manifest", "seal")}
    document["attributes"].update(format=1, complete=False, shards_done=1)
    (building / "zarr.json").write_text(json.dumps(document))
    with catalog_writer(copy) as con:
        con.execute("UPDATE feature_splits SET status = 'building' WHERE split = 'train'")

    assert run_cli(capsys, "--root", str(copy.root), "build", "--model", MODEL, "--device", "cpu")[0] == 0
    assert data_files(copy) == data_files(pristine)
    assert run_cli(capsys, "--root", str(copy.root), "verify") == (0, "", "")


def test_the_writer_records_shards_in_any_order_once_and_refuses_a_split_with_shards_missing(tmp_path):
    from featstore.store.layout import SplitShape
    from featstore.store.location import LocalLocation

    shape = SplitShape(n_examples=300, n_layers=1, n_heads=1, d_model=2, max_seq_len=4)
    writer = SplitWriter(LocalLocation(tmp_path), "split", shape, {}, build_key="k")
    rows = shape.shard_rows(1)
    n = rows.stop - rows.start
    arrays = (np.ones((n, 1, 1, 4), np.float16), np.ones((n, 1, 2), np.float16), np.ones((n, 4), np.int32))
    writer.write_shard(1, *arrays)
    with pytest.raises(FeatstoreError, match=r"shard 1 .* is not pending \(written: \[1\]\)"):
        writer.write_shard(1, *arrays)
    resumed = SplitWriter(LocalLocation(tmp_path), "split", shape, {}, build_key="k")
    assert resumed.pending_shards == [0, 2] and {entry[2] for entry in resumed.recorder.manifest.values()} == {None, 1}
    with pytest.raises(FeatstoreError, match=r"cannot be published: shards \[0, 2\] are not written"):
        resumed.publish()
