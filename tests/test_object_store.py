"""A project whose store is an S3 bucket (moto and seaweedfs on loopback): the same arrays and results as a
local folder, clones on other machines, resumable builds, one writer at a time, clear errors when the
store is unreachable, and reads that fetch only the chunks they need."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import s3fs

from featstore.api import Store
from featstore.cli import main
from featstore.errors import FeatstoreError
from featstore.extraction.build import build_features
from featstore.extraction.plan import BuildSettings
from featstore.project import Project, open_project
from featstore.store.layout import split_prefix
from featstore.store.lease import LEASE, Lease, assert_held, holding_lease
from featstore.store.location import store_location
from featstore.store.writer import SplitWriter
from tests.builders import MODEL, toy_project
from tests.object_servers import bucket_and_prefix

BUILD = ["build", "--model", MODEL, "--device", "cpu", "--batch-tokens", "64"]


def bucket_project(root, url: str, n: int = 300) -> Project:
    """A cleaned toy project (`1_toy`) whose store is `url`."""
    return toy_project(root, n, store=url)


def decoded(project: Project, split: str) -> dict[str, np.ndarray]:
    """Every stored value of a split of `1_toy`, read through a view."""
    view = Store(project).view("1_toy", split, dask=False)
    return {
        **{name: view[name].values for name in ("attn", "resid", "tokens")},
        "example_id": view["example_id"].values,
        "seq_len": view["seq_len"].values,
    }


def assert_same_arrays(ours: Project, reference: Project) -> None:
    for split in ("train", "test"):
        theirs = decoded(reference, split)
        for name, values in decoded(ours, split).items():
            np.testing.assert_array_equal(values, theirs[name], err_msg=f"{split}/{name}")


def bucket_keys(server, url: str) -> list[str]:
    bucket, prefix = bucket_and_prefix(url)
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return [item["Key"][len(prefix) + 1 :] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def reference_900(tmp_path_factory) -> Project:
    """A local toy project of 900 examples (several shards) built in batches of 64 tokens, as `BUILD` does."""
    project = toy_project(tmp_path_factory.mktemp("reference") / "p", n=900)
    build_features(project, MODEL, None, BuildSettings(device="cpu", batch_tokens=64))
    return project


def results(project: Project):
    return Store(project).sql("SELECT result_id, roc_auc, accuracy FROM probe_results ORDER BY result_id")


def test_a_bucket_store_builds_probes_and_reads_like_a_local_folder(moto_s3, monkeypatch, tmp_path, toy_copy, capsys):
    moto_s3.use_env(monkeypatch)
    url = moto_s3.bucket_url()
    project = bucket_project(tmp_path / "bucket", url)
    build_features(project, MODEL, None, BuildSettings(device="cpu"))
    assert_same_arrays(project, toy_copy)
    assert not (project.store_dir / "features.zarr").exists()
    keys = bucket_keys(moto_s3, url)
    assert any(key.startswith("features.zarr/") for key in keys) and "catalog.duckdb" in keys

    for local in (project, toy_copy):
        assert main(["--root", str(local.root), "probe", "--model", MODEL, "--feature", "length"]) == 0
    assert results(project).equals(results(toy_copy))
    assert any(key.startswith("probes/") for key in bucket_keys(moto_s3, url))
    assert main(["--root", str(project.root), "verify"]) == 0
    assert capsys.readouterr().err == ""


def test_a_clone_elsewhere_reads_features_in_place_and_probes(moto_s3, monkeypatch, tmp_path, capsys):
    moto_s3.use_env(monkeypatch)
    url = moto_s3.bucket_url()
    project = bucket_project(tmp_path / "bucket", url)
    build_features(project, MODEL, None, BuildSettings(device="cpu"))
    assert main(["--root", str(project.root), "probe", "--model", MODEL, "--feature", "length"]) == 0

    assert main(["clone", url, str(tmp_path / "elsewhere")]) == 0
    clone = open_project(tmp_path / "elsewhere")
    assert clone.store.url == url and (clone.root / "datasets" / "cleaned" / "1_toy.csv").is_file()
    assert not (clone.store_dir / "features.zarr").exists()
    assert_same_arrays(clone, project)
    assert results(clone).equals(results(project))
    assert (
        main(["--root", str(clone.root), "probe", "--model", MODEL, "--probe", "mass-mean", "--feature", "length"]) == 0
    )
    assert len(results(clone)) == 2
    assert main(["--root", str(project.root), "probe", "--model", MODEL, "--feature", "length"]) == 0  # pulls first
    assert len(results(project)) == 2
    assert main(["clone", url, str(tmp_path / "elsewhere")]) == 1
    assert "already holds a featstore project" in capsys.readouterr().err


def test_a_one_layer_read_of_the_test_split_fetches_only_its_chunks(moto_s3, monkeypatch, tmp_path):
    moto_s3.use_env(monkeypatch)
    project = bucket_project(tmp_path / "bucket", moto_s3.bucket_url(), n=600)
    build_features(project, MODEL, None, BuildSettings(device="cpu"))
    counts = {}
    for label, layers in (("one layer", [0]), ("all layers", None)):
        moto_s3.reset_requests()
        view = Store(project).view("1_toy", "test", layers=layers)
        view["attn"].astype("float32").sum().compute()
        counts[label] = list(moto_s3.requests)
    for label, requests in counts.items():
        assert not [r for r in requests if r.method != "GET" or "list-type" in r.query or "prefix=" in r.query], label
    attn_reads = {label: [r for r in requests if "/attn/c/" in r.path] for label, requests in counts.items()}
    print(
        f"one-layer test read: {len(counts['one layer'])} requests ({len(attn_reads['one layer'])} on attn "
        f"shards); all layers: {len(counts['all layers'])} ({len(attn_reads['all layers'])})"
    )
    assert 0 < len(attn_reads["one layer"]) < len(attn_reads["all layers"])


def test_kill_9_during_a_build_to_a_bucket_then_a_rerun_resumes_to_identical_arrays(
    moto_s3, monkeypatch, tmp_path, reference_900
):
    moto_s3.use_env(monkeypatch)
    url = moto_s3.bucket_url()
    project = bucket_project(tmp_path / "bucket", url, n=900)
    process = subprocess.Popen(
        [sys.executable, "-m", "featstore.cli", "--root", str(project.root), *BUILD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prefix = split_prefix(MODEL, "1_toy", "train")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        roots = [
            key
            for key in bucket_keys(moto_s3, url)
            if key.startswith(prefix) and key.endswith("/zarr.json") and key.count("/") == prefix.count("/") + 2
        ]
        if roots and _shards_written(moto_s3, url, roots[0]):
            break
        time.sleep(0.1)
    assert process.poll() is None, "the build finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert LEASE in bucket_keys(moto_s3, url)  # left by the killed build: taken over, its pid being gone

    assert main(["--root", str(project.root), *BUILD]) == 0
    assert_same_arrays(project, reference_900)
    versions = {key.split("/")[4] for key in bucket_keys(moto_s3, url) if key.startswith(prefix + "/")}
    assert len(versions) == 1 and LEASE not in bucket_keys(moto_s3, url)


def _shards_written(server, url: str, key: str) -> list[int]:
    bucket, prefix = bucket_and_prefix(url)
    body = server.client().get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read()
    return json.loads(body).get("attributes", {}).get("shards_written", [])


def test_a_server_stopped_mid_build_is_one_line_and_a_restart_resumes(
    moto_s3, monkeypatch, tmp_path, capsys, reference_900
):
    moto_s3.use_env(monkeypatch)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore's standard variable: fail in seconds, not 15-25 s
    project = bucket_project(tmp_path / "bucket", moto_s3.bucket_url(), n=900)
    real_write = SplitWriter.record_shard

    def stop_after_first_shard(self, shard, *arrays):
        real_write(self, shard, *arrays)
        if shard == 0:
            moto_s3.stop()

    monkeypatch.setattr(SplitWriter, "record_shard", stop_after_first_shard)
    started = time.monotonic()
    assert main(["--root", str(project.root), *BUILD]) == 1
    waited = time.monotonic() - started
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be reached" in err and "Traceback" not in err, err
    assert waited < 90
    monkeypatch.setattr(SplitWriter, "record_shard", real_write)
    moto_s3.start()
    assert main(["--root", str(project.root), *BUILD]) == 0
    assert_same_arrays(project, reference_900)


def test_a_second_writer_on_the_same_url_is_refused_naming_the_holder(moto_s3, monkeypatch, tmp_path, capsys):
    moto_s3.use_env(monkeypatch)
    url = moto_s3.bucket_url()
    project = bucket_project(tmp_path / "bucket", url)
    lease = {
        "token": "x",
        "command": "featstore build",
        "host": "gpu-node-7",
        "pid": 4242,
        "since": time.time(),
        "expires": time.time() + 600,
    }
    project.store.write_bytes(LEASE, json.dumps(lease).encode())
    before = bucket_keys(moto_s3, url)
    assert main(["--root", str(project.root), *BUILD]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "featstore build on gpu-node-7 (pid 4242)" in err
    assert bucket_keys(moto_s3, url) == before

    project.store.write_bytes(LEASE, json.dumps({**lease, "expires": time.time() - 1}).encode())  # a crashed holder
    assert main(["--root", str(project.root), *BUILD]) == 0
    assert LEASE not in bucket_keys(moto_s3, url)


def test_a_lapsed_lease_goes_to_one_taker_only_and_a_holder_that_lost_it_stops(moto_s3, monkeypatch, tmp_path):
    moto_s3.use_env(monkeypatch)
    location = store_location(moto_s3.bucket_url())
    location.write_bytes(LEASE, json.dumps({"token": "old", "host": "gone", "pid": 1, "expires": 0}).encode())
    _, stale_tag = location.read_tagged(LEASE)  # what a second taker read before the first one replaced it
    with holding_lease(location, "featstore build") as lease:
        assert not location.replace_bytes(LEASE, b"second taker", stale_tag)
        with pytest.raises(FeatstoreError, match="featstore build on .* has been writing"):
            Lease(location, "featstore probe").acquire()
        lease.renew()
        assert lease.lost is None
        location.write_bytes(LEASE, b'{"token": "someone else"}')  # taken over while this holder was away
        lease.renew()
        with pytest.raises(FeatstoreError, match="another command took over its lease; nothing more was published"):
            assert_held(location)
    assert location.read_bytes(LEASE) == b'{"token": "someone else"}'  # not deleted: it is not ours


def test_a_file_changed_here_and_in_the_store_is_refused_and_new_local_files_are_kept(
    moto_s3, monkeypatch, tmp_path, capsys
):
    moto_s3.use_env(monkeypatch)
    url = moto_s3.bucket_url()
    here = bucket_project(tmp_path / "here", url)
    assert main(["clone", url, str(tmp_path / "there")]) == 0
    there = open_project(tmp_path / "there")
    there.registry_path.write_text(there.registry_path.read_text() + "\n")
    assert main(["--root", str(there.root), "datasets", "clean"]) == 0  # pushes the changed registry
    capsys.readouterr()
    (here.raw_dir / "mine.csv").write_text("prompt,target\n")
    here.registry_path.write_text(here.registry_path.read_text() + "\n\n")
    assert main(["--root", str(here.root), "datasets", "clean"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "datasets/main.csv changed here and in" in err
    assert (here.raw_dir / "mine.csv").is_file()


def test_missing_credentials_a_missing_bucket_and_a_mistyped_url_are_one_line(moto_s3, monkeypatch, tmp_path, capsys):
    project = toy_project(tmp_path / "p")
    moto_s3.use_env(monkeypatch)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable)
    s3fs.S3FileSystem.clear_instance_cache()
    cases = {
        ("--store", moto_s3.bucket_url()): "no credentials for the store",
        ("--store", "s3:/bucket/x"): "is not a store URL",
        ("--store", "s4://bucket/x"): "cannot be used",
    }
    for options, message in cases.items():
        assert main(["--root", str(project.root), *options, "datasets", "clean"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    moto_s3.use_env(monkeypatch)
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses filesystems (and their credentials) within a process
    assert main(["--root", str(project.root), "--store", "s3://no-such-bucket-here/x", "datasets", "clean"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err, err


def test_an_unreachable_store_is_one_line(monkeypatch, tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    project = toy_project(tmp_path / "p")
    assert main(["--root", str(project.root), "--store", "s3://nowhere/proj", *BUILD]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s3://nowhere/proj cannot be reached" in err, err


def test_seaweedfs_round_trip(seaweed_s3, monkeypatch, tmp_path, toy_copy):
    seaweed_s3.use_env(monkeypatch)
    project = bucket_project(tmp_path / "bucket", seaweed_s3.bucket_url())
    assert main(["--root", str(project.root), "build", "--model", MODEL, "--device", "cpu"]) == 0
    assert_same_arrays(project, toy_copy)
    for local in (project, toy_copy):
        assert main(["--root", str(local.root), "probe", "--model", MODEL, "--feature", "length"]) == 0
    assert results(project).equals(results(toy_copy))
    assert main(["clone", project.store.url, str(tmp_path / "clone")]) == 0
    assert_same_arrays(open_project(tmp_path / "clone"), project)
    assert project.store.create_bytes("conditional-put", b"1") and not project.store.create_bytes(
        "conditional-put", b"2"
    )


def test_the_store_is_chosen_by_option_variable_or_settings_file(tmp_path, monkeypatch, capsys):
    shared = tmp_path / "shared-folder"
    assert main(["init", str(tmp_path / "p"), "--store", str(shared)]) == 0
    assert open_project(tmp_path / "p").store.url == str(shared)
    assert f'url = "{shared}"' in (tmp_path / "p" / "featstore.toml").read_text()
    monkeypatch.setenv("FEATSTORE_STORE", "s3://from-the-variable/x")
    assert open_project(tmp_path / "p").store.url == "s3://from-the-variable/x"
    assert open_project(tmp_path / "p", "s3://from-the-option/y").store.url == "s3://from-the-option/y"
    monkeypatch.delenv("FEATSTORE_STORE")
    (tmp_path / "p" / "featstore.toml").write_text("[store\nurl = 1")
    assert main(["--root", str(tmp_path / "p"), "datasets", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "featstore.toml is not valid TOML" in err


def test_a_store_in_another_folder_is_mirrored_and_clones_from_a_file_url(tmp_path, toy_copy):
    shared = tmp_path / "shared"
    project = toy_project(tmp_path / "mine")
    assert main(["--root", str(project.root), "--store", str(shared), *BUILD[:5]]) == 0
    assert not (project.store_dir / "features.zarr").exists() and (shared / "features.zarr").is_dir()
    assert (shared / "catalog.duckdb").is_file() and (shared / "datasets" / "main.csv").is_file()
    assert main(["clone", f"file://{shared}", str(tmp_path / "clone")]) == 0
    assert_same_arrays(open_project(tmp_path / "clone"), toy_copy)
