"""A hostile store: buckets and shared folders crafted by hand, their listings and catalogs edited to match the
payload. Every case must end in one line on stderr and a non-zero exit, with the victim files outside the
project byte-identical and nothing written or deleted outside it."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import duckdb
import google_crc32c
import pytest

from featstore.cli import main
from featstore.errors import FeatstoreError
from featstore.project import open_project
from featstore.session import mirror
from featstore.store.documents import MAX_DOCUMENT_BYTES, read_document
from featstore.store.layout import new_version, split_prefix
from featstore.store.location import LocalLocation
from featstore.store.safe_paths import MAX_ENTRIES, UnsafeName, checked_key, confined_path
from featstore.store.writer import _resumable_version, retire_versions
from tests.builders import MODEL, published_folder, toy_project
from tests.factories import registry_row, write_registry
from tests.object_servers import bucket_and_prefix

VICTIM = b"the user's own file\n"
SHARED_BUILD = ["build", "--model", MODEL, "--device", "cpu", "--batch-tokens", "64"]


def entry(data: bytes) -> list[int]:
    return [len(data), int(google_crc32c.value(data))]


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, bytes | None]:
    """Every file below `folder` (but `skip`), with its bytes: what must not change."""
    return {
        str(p): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if skip is None or not p.is_relative_to(skip)
    }


def hostile_folder(root: Path, files: dict[str, bytes], listing: dict | None = None, generation: int = 1) -> Path:
    """A shared folder holding `files` (stored beside it by their keys, so `../x` really is a file next to it)
    and a `project.json` that lists them with matching sizes and checksums (or `listing` verbatim)."""
    shared = root / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    for key, data in files.items():
        if not key.startswith("/") and "\x00" not in key and len(key) < 255:
            target = Path(os.path.normpath(shared / key.replace("\\", "/")))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    state = (
        listing if listing is not None else {"generation": generation, "files": {k: entry(v) for k, v in files.items()}}
    )
    (shared / "project.json").write_text(json.dumps(state))
    return shared


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("featstore: error:"), err
    assert all(needle in err for needle in needles), err
    return err


@pytest.mark.parametrize(
    "key",
    [
        "../victim.txt",
        "datasets/../../victim.txt",
        "tokenizers/../../victim.txt",
        "datasets/../victim.txt",
        "ABSOLUTE",
        "datasets/raw/..\\..\\victim.txt",
        "datasets/C:victim.txt",
        "datasets/a\x00b",
        "datasets//x.csv",
        "datasets/./x.csv",
        "datasets/" + "x" * 300,
        "features.zarr/m/d/s/zarr.json",
        "catalog.duckdb",
    ],
)
def test_a_clone_of_a_listing_that_escapes_writes_nothing_anywhere(tmp_path, capsys, key):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    key = str(victim) if key == "ABSOLUTE" else key
    payload = b"overwritten by a hostile store\n"
    shared = hostile_folder(tmp_path, {"datasets/main.csv": b"number\n", key: payload})
    victim.write_bytes(VICTIM)  # the payload beside the store may be the victim itself: restore it
    before = snapshot(tmp_path)
    assert main(["clone", f"file://{shared}", str(tmp_path / "clone")]) == 1
    one_line_error(capsys, "refused" if "zarr" not in key and key != "catalog.duckdb" else "is not below")
    assert victim.read_bytes() == VICTIM
    assert snapshot(tmp_path) == before and not (tmp_path / "clone").exists()


def test_a_pull_through_a_local_link_out_of_the_project_is_refused(tmp_path, capsys):
    shared = hostile_folder(tmp_path, {"datasets/main.csv": b"number\n"})
    assert main(["clone", f"file://{shared}", str(tmp_path / "clone")]) == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.csv").write_bytes(VICTIM)
    clone = open_project(tmp_path / "clone")
    (clone.datasets_dir / "raw").symlink_to(outside)
    hostile_folder(tmp_path, {"datasets/main.csv": b"number\n", "datasets/raw/x.csv": b"payload\n"}, generation=2)
    with pytest.raises(FeatstoreError, match="through a link"):
        mirror.pull(clone)
    assert (outside / "x.csv").read_bytes() == VICTIM


def test_a_download_that_does_not_match_its_listing_replaces_nothing(tmp_path, capsys):
    shared = hostile_folder(tmp_path, {"datasets/main.csv": b"number\n"})
    assert main(["clone", f"file://{shared}", str(tmp_path / "clone")]) == 0
    registry = tmp_path / "clone" / "datasets" / "main.csv"
    listing = {
        "generation": 2,
        "files": {"datasets/main.csv": entry(b"number,tag\n"), "datasets/new.csv": entry(b"new\n")},
    }
    hostile_folder(tmp_path, {"datasets/main.csv": b"tampered!!\n", "datasets/new.csv": b"new\n"}, listing)
    assert main(["--root", str(tmp_path / "clone"), "datasets", "list"]) == 1
    one_line_error(capsys, "does not match")
    assert registry.read_bytes() == b"number\n" and not (registry.parent / "new.csv").exists()
    with pytest.raises(FeatstoreError, match="does not match its size and crc32c"):
        mirror.pull(open_project(tmp_path / "clone"))
    assert registry.read_bytes() == b"number\n"


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[1, 2]",
        b'{"generation": 1}',
        b'{"generation": "1", "files": {}}',
        b'{"generation": true, "files": {}}',
        b'{"generation": 1, "files": []}',
        b'{"generation": 1, "files": {"datasets/x": "big"}}',
        b'{"generation": 1, "files": {"datasets/x": [1, 2, 3]}}',
        b'{"generation": 1, "files": {"datasets/x": [-1, 2]}}',
        b"[" * 100_000,
        b"\xff\xfe",
        "HUGE",
        "MANY",
    ],
)
def test_a_malformed_listing_is_one_line(tmp_path, capsys, document):
    if document == "HUGE":
        document = b'{"generation": 1, "files": {}' + b" " * MAX_DOCUMENT_BYTES + b"}"
    elif document == "MANY":
        document = json.dumps(
            {"generation": 1, "files": {f"datasets/{i}": [0, 0] for i in range(MAX_ENTRIES + 1)}}
        ).encode()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "project.json").write_bytes(document)
    assert main(["clone", f"file://{shared}", str(tmp_path / "clone")]) == 1
    one_line_error(capsys)
    assert not (tmp_path / "clone").exists()


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:",
        "s3://bucket one/x",
        "http://example.com/x",
        "https://h/x",
        "s3://bucket/x?versionId=1",
        "zip://x",
        "memory://x",
        "s3://ab/x",
        "s3://bucket/a/../b",
        "gs://bucket/x",
        "s3://Bucket/x",
        "s3://bucket/x#y",
    ],
)
def test_store_urls_are_checked_when_parsed(tmp_path, monkeypatch, capsys, url):
    monkeypatch.chdir(tmp_path)
    assert main(["init", str(tmp_path / "p"), "--store", url]) == 1
    one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_retiring_versions_deletes_only_what_featstore_named(tmp_path):
    location = LocalLocation(tmp_path / "store")
    prefix = "features.zarr/m/1_toy/train"
    folder = location.root / prefix
    old, current, killed = new_version(), new_version(), new_version()
    for version in (old, current, killed):
        (folder / version).mkdir(parents=True)
        (folder / version / "zarr.json").write_text("{}")
    (folder / current / "COMPLETE").write_text("")
    (folder / old / "COMPLETE").write_text("")
    for name in ("important.txt", "vimportant.txt"):
        (folder / name).write_bytes(VICTIM)
    for name in ("notes", "very_important", "v1"):
        (folder / name).mkdir()
        (folder / name / "keep.txt").write_bytes(VICTIM)
    for name in ("zarr.json", "COMPLETE"):  # the layout before versions
        (folder / name).write_text("{}")
    (folder / "attn").mkdir()
    (folder / "attn" / "c").write_text("")
    assert _resumable_version(location, prefix, "other inputs") is None
    assert not (folder / killed).exists() and (folder / "very_important" / "keep.txt").read_bytes() == VICTIM
    retire_versions(location, prefix, f"{prefix}/{current}")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [current, "important.txt", "vimportant.txt", "notes", "very_important", "v1"]
    )
    assert all((folder / name / "keep.txt").read_bytes() == VICTIM for name in ("notes", "very_important", "v1"))


@pytest.mark.parametrize("dataset", ["1_x/../../..", "..", "1_x\\..", "a" * 250, "1_x\n"])
def test_names_from_a_catalog_never_become_keys_that_leave_their_folder(dataset):
    with pytest.raises(UnsafeName):
        split_prefix(MODEL, dataset, "train")
    with pytest.raises(UnsafeName):
        split_prefix(MODEL, "1_toy", dataset)
    with pytest.raises(UnsafeName):
        LocalLocation(Path("/tmp/store")).path(f"features.zarr/{dataset}/x")


def test_checked_keys_and_confined_paths(tmp_path):
    assert checked_key("datasets/raw/x.csv", "key") == "datasets/raw/x.csv"
    for bad in ("", "/x", "a//b", "a/", "a/./b", "a/../b", "a\\b", "C:/x", "a\x7fb", 7, None):
        with pytest.raises(UnsafeName):
            checked_key(bad, "key")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    assert confined_path(tmp_path / "root", "a/b", "key") == tmp_path / "root" / "a" / "b"
    with pytest.raises(UnsafeName, match="through a link"):
        confined_path(tmp_path / "root", "out/x", "key")


def renamed_in_catalog(project, old: str, new: str) -> None:
    """A catalog edited as a hostile colleague would: a dataset renamed everywhere it is named."""
    con = duckdb.connect(str(project.catalog_path))
    for table, column in (
        ("datasets", "name"),
        ("examples", "dataset"),
        ("features", "dataset"),
        ("feature_splits", "dataset"),
    ):
        con.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", [new, old])
    con.close()


def test_a_dataset_name_that_escapes_steers_no_report_or_build(toy_copy, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    renamed_in_catalog(toy_copy, "1_toy", "1_toy/../../../../victim")
    before = snapshot(tmp_path, skip=toy_copy.root)
    assert main(["--root", str(toy_copy.root), "report", "--out", str(tmp_path / "site")]) == 1
    one_line_error(capsys, "dataset", "not a plain name")
    assert main(["--root", str(toy_copy.root), *SHARED_BUILD, "--overwrite", "--limit", "8"]) == 1
    one_line_error(capsys)
    assert snapshot(tmp_path, skip=toy_copy.root) == before


def test_a_root_document_padded_past_the_cap_is_damage_read_no_further(toy_copy, capsys):
    root = published_folder(toy_copy, "test") / "zarr.json"
    with open(root, "r+b") as handle:
        handle.truncate(1 << 30)  # sparse: 1 GiB on paper
    tracemalloc.start()
    with pytest.raises(FeatstoreError, match="larger than"):
        read_document(LocalLocation(toy_copy.store_dir), str(root.relative_to(toy_copy.store_dir)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * MAX_DOCUMENT_BYTES
    assert main(["--root", str(toy_copy.root), "verify"]) == 1
    out = capsys.readouterr().out
    assert "larger than" in out


def test_a_split_swapped_for_another_self_consistent_split_fails_verify(toy_copy, capsys):
    test, train = published_folder(toy_copy, "test"), published_folder(toy_copy, "train")
    shutil.rmtree(test)
    shutil.copytree(train, test)
    assert main(["--root", str(toy_copy.root), "verify"]) == 1
    assert "holds the features of 1_toy/train" in capsys.readouterr().out
    repair = ["--root", str(toy_copy.root), "build", "--repair", "--model", MODEL, "--device", "cpu"]
    assert main(repair) == 0  # the command verify prints rebuilds the swapped split
    assert main(["--root", str(toy_copy.root), "verify"]) == 0


@pytest.mark.parametrize("where", [0, 8192])
def test_a_catalog_with_flipped_bytes_is_one_line_naming_a_recovery(toy_copy, capsys, where):
    data = bytearray(toy_copy.catalog_path.read_bytes())
    for offset in range(where, where + 64):
        data[offset] ^= 0xFF
    toy_copy.catalog_path.write_bytes(data)
    for command in (["datasets", "list"], ["verify"], ["results"], ["sql", "SELECT count(*) FROM examples"]):
        assert main(["--root", str(toy_copy.root), *command]) == 1
        one_line_error(capsys, "damaged", "clone")


def test_a_long_tag_is_refused_when_the_registry_is_read(project, capsys):
    write_registry(project, [registry_row(1, "t" * 300, "toy.csv")])
    assert main(["--root", str(project.root), "datasets", "clean"]) == 1
    one_line_error(capsys, "longer than 100 bytes")


def test_a_read_only_command_on_a_clone_sees_a_rebuild_done_elsewhere(tmp_path, capsys):
    shared = tmp_path / "shared"
    mine = toy_project(tmp_path / "mine")
    assert main(["--root", str(mine.root), "--store", str(shared), *SHARED_BUILD, "--limit", "16"]) == 0
    assert main(["clone", f"file://{shared}", str(tmp_path / "clone")]) == 0
    assert main(["--root", str(mine.root), "--store", str(shared), *SHARED_BUILD, "--limit", "16", "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["--root", str(tmp_path / "clone"), "verify"]) == 0, capsys.readouterr()
    assert capsys.readouterr().err == ""


def test_a_hostile_bucket_listing_is_refused_before_any_download(moto_s3, monkeypatch, tmp_path, capsys):
    moto_s3.use_env(monkeypatch)
    url = moto_s3.bucket_url()
    bucket, prefix = bucket_and_prefix(url)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    client = moto_s3.client()
    payload = b"overwritten\n"
    for key in ("datasets/../../victim.txt", str(victim)):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=payload)
        state = {"generation": 1, "files": {"datasets/main.csv": entry(b"n\n"), key: entry(payload)}}
        client.put_object(Bucket=bucket, Key=f"{prefix}/project.json", Body=json.dumps(state).encode())
        assert main(["clone", url, str(tmp_path / "clone")]) == 1
        one_line_error(capsys, "refused")
        assert victim.read_bytes() == VICTIM and not (tmp_path / "clone").exists()
    client.put_object(Bucket=bucket, Key=f"{prefix}/project.json", Body=b"{" + b" " * (MAX_DOCUMENT_BYTES + 1))
    assert main(["clone", url, str(tmp_path / "clone")]) == 1
    one_line_error(capsys, "larger than")


def test_an_array_document_padded_in_place_is_damage_read_to_its_recorded_size(toy_copy):
    from featstore.api import Store
    from featstore.store.integrity import DamagedSplit

    with open(published_folder(toy_copy, "test") / "attn" / "zarr.json", "r+b") as handle:
        handle.truncate(1 << 30)  # sparse: 1 GiB on paper, the manifest still lists its true size
    tracemalloc.start()
    with pytest.raises(DamagedSplit, match="attn/zarr.json does not match its checksum"):
        Store(toy_copy).view("1_toy", "test", dask=False)["attn"].to_numpy()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20
