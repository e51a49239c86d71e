"""`--cluster`: builds and probe sweeps on a dask LocalCluster (2 worker processes) give what one process gives,
survive a worker or the coordinator killed mid-build, and fail in one line when the model or the cluster fails."""

import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster, WorkerPlugin

from featstore import cluster as cluster_module
from featstore.api import Store
from featstore.cli import main
from featstore.project import open_project
from featstore.store.layout import SHARD_EXAMPLES
from tests.builders import (
    MODEL,
    build_command,
    building_folder,
    published_folder,
    toy_project,
    wait_for_a_written_shard,
)

SPLITS = ("train", "test")
ARRAYS = ("attn", "resid", "tokens", "seq_len", "example_id")


@pytest.fixture(scope="module")
def address():
    """One LocalCluster for the module: 2 single-threaded worker processes (each loads the model once)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def build(project, *args):
    return main(["--root", str(project.root), "build", "--model", MODEL, "--device", "cpu", *args])


def assert_same_arrays(ours, reference):
    """Equal decoded arrays, equal manifests (so equal stored bytes) and equal catalog rows for every split."""
    for split in SPLITS:
        a = zarr.open_group(published_folder(ours, split), mode="r")
        b = zarr.open_group(published_folder(reference, split), mode="r")
        for name in ARRAYS:
            np.testing.assert_array_equal(a[name][:], b[name][:])
        assert a.attrs["manifest"] == b.attrs["manifest"]
        assert a.attrs["shards_written"] == list(range(-(-a["attn"].shape[0] // SHARD_EXAMPLES)))
    query = "SELECT * EXCLUDE (built_at, build_seconds, path) FROM feature_splits ORDER BY ALL"
    assert Store(ours).sql(query).equals(Store(reference).sql(query))
    rows = "SELECT * FROM features ORDER BY ALL"
    assert Store(ours).sql(rows).equals(Store(reference).sql(rows))


def test_a_cluster_build_stores_what_one_process_stores(address, toy_template, tmp_path):
    project = toy_project(tmp_path / "p")
    assert build(project, "--cluster", address) == 0
    assert_same_arrays(project, toy_template)  # train has 2 shards, test 1
    assert build(project, "--cluster", address) == 0  # built: nothing to do


class KillMidShard(WorkerPlugin):
    """Makes the first shard a worker writes (across the cluster, once: `marker`) leave a torn file behind and
    kill its worker process before returning."""

    def __init__(self, marker: str):
        self.marker = marker

    def setup(self, worker):
        from featstore.extraction import distributed_build

        write = distributed_build.write_shard_arrays

        def write_then_die(location, key, shape, shard, *arrays):
            entries = write(location, key, shape, shard, *arrays)
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return entries
            torn = next(name for name in entries if name.startswith("attn/"))
            location.write_bytes(f"{key}/{torn}", b"torn")
            os.kill(os.getpid(), signal.SIGKILL)

        distributed_build.write_shard_arrays = write_then_die


def test_a_worker_killed_mid_shard_leaves_the_build_complete_and_identical(address, toy_template, tmp_path):
    project = toy_project(tmp_path / "p")
    marker = tmp_path / "killed"
    with Client(address) as client:
        client.register_plugin(KillMidShard(str(marker)), name="kill-mid-shard")
        try:
            assert build(project, "--cluster", address) == 0
        finally:
            client.unregister_worker_plugin("kill-mid-shard")
        client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed one
    assert marker.exists()
    assert_same_arrays(project, toy_template)


def test_a_killed_coordinator_resumes_to_identical_arrays(address, tmp_path):
    reference = toy_project(tmp_path / "reference", n=900)
    assert build(reference, "--batch-tokens", "64") == 0
    project = toy_project(tmp_path / "p", n=900)  # train: 800 rows, 7 shards
    command = build_command(project, "--batch-tokens", "64", "--cluster", address)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_a_written_shard(process, project)
    assert process.poll() is None, "the build finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 0 < len(zarr.open_group(building_folder(project, "train"), mode="r").attrs["shards_written"]) < 7
    # the unfinished train split recorded no rows (the test split, built at the same time, may have finished)
    assert Store(project).sql("SELECT count(*) AS n FROM features WHERE split = 'train'")["n"][0] == 0
    assert build(project, "--batch-tokens", "64", "--cluster", address) == 0
    assert_same_arrays(project, reference)


def test_a_model_that_fails_to_load_on_the_workers_is_one_line_and_records_nothing(
    address, toy_template, tmp_path, capsys
):
    project = open_project(shutil.copytree(toy_template.root, tmp_path / "p"))
    weights = tmp_path / "Broken.gguf"
    weights.write_bytes(b"not a gguf file")
    before = Store(project).sql("SELECT * FROM feature_splits ORDER BY ALL")
    args = ["--root", str(project.root), "build", "--model", str(weights), "--cluster", address]
    assert main(args) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("featstore:")]
    assert len(lines) == 1 and lines[0].startswith("featstore: error: dask worker tcp://")
    assert "cannot load model" in lines[0]
    assert Store(project).sql("SELECT * FROM feature_splits ORDER BY ALL").equals(before)
    assert not (project.store_dir / "features.zarr" / "Broken").exists()


def test_a_cluster_probe_sweep_writes_the_rows_of_a_local_run_and_passes_warnings_on(
    address, toy_template, tmp_path, capsys
):
    local = open_project(shutil.copytree(toy_template.root, tmp_path / "local"))
    remote = open_project(shutil.copytree(toy_template.root, tmp_path / "remote"))
    settings = ["--model", MODEL, "--aggregation", "mean", "first", "--probe", "logreg", "mass-mean"]
    assert main(["--root", str(local.root), "probe", *settings]) == 0
    capsys.readouterr()
    assert main(["--root", str(remote.root), "probe", *settings, "--cluster", address]) == 0
    err = capsys.readouterr().err.splitlines()
    query = "SELECT result_id, roc_auc, hyperparameters, n_train, n_test FROM probe_results ORDER BY result_id"
    assert Store(remote).sql(query).equals(Store(local).sql(query)) and len(Store(local).sql(query)) == 4
    scores = "SELECT * FROM probe_scores ORDER BY ALL"
    assert Store(remote).sql(scores).equals(Store(local).sql(scores))
    length_only = {line.split(": ")[3] for line in err if "LengthOnlyFeatureWarning" in line}
    assert length_only == {"1_toy (attn L0,1, mean, logreg)", "1_toy (attn L0,1, mean, mass-mean)"}
    assert not list(remote.store_dir.glob(".featstore-probe-*"))  # the scratch folder in the store is gone


@pytest.mark.parametrize(
    "value, problem",
    [("tcp://127.0.0.1:9", "cannot connect to the dask cluster"), ("local:0", "local:N needs N of at least 1")],
)
def test_a_bad_cluster_address_is_one_line(toy_template, tmp_path, capsys, monkeypatch, value, problem):
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT_S", 1.0)
    project = open_project(shutil.copytree(toy_template.root, tmp_path / "p"))
    assert main(["--root", str(project.root), "probe", "--model", MODEL, "--cluster", value]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err


def test_a_cluster_build_writes_to_a_bucket_what_one_process_writes(moto_s3, monkeypatch, toy_template, tmp_path):
    from tests.test_object_store import assert_same_arrays as same_decoded_arrays
    from tests.test_object_store import bucket_project

    moto_s3.use_env(monkeypatch)  # before the workers start: they find the bucket through the same variables
    project = bucket_project(tmp_path / "bucket", moto_s3.bucket_url())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        assert build(project, "--cluster", cluster.scheduler_address) == 0
    assert not (project.store_dir / "features.zarr").exists()
    same_decoded_arrays(project, toy_template)
    assert main(["--root", str(project.root), "verify"]) == 0
