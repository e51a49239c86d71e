"""`featstore build`: stored numbers against the model run on each example alone, resumption, locking."""

import dataclasses
import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from featstore.api import Store
from featstore.catalog.splits import SplitParams
from featstore.cli import main
from featstore.datasets.cleaning import clean_datasets
from featstore.datasets.registry import load_registry
from featstore.errors import FeatstoreError
from featstore.extraction import build as build_module
from featstore.extraction.build import CPU_BATCH_TOKENS, build_features, default_batch_tokens
from featstore.extraction.model_sources import parse_model_spec
from featstore.extraction.plan import BuildSettings
from featstore.project import init_project
from featstore.store.layout import LEGACY_CHUNKING, SHARD_EXAMPLES
from featstore.store.locking import BUILD_LOCK, exclusive_build
from featstore.store.writer import SplitWriter
from tests.builders import (
    MODEL,
    build_command,
    building_folder,
    built_toy_project,
    new_version_folder,
    published_folder,
    toy_project,
    wait_for_a_written_shard,
)
from tests.factories import registry_row, write_registry


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_toy_project(tmp_path_factory.mktemp("built") / "proj")


@pytest.fixture(scope="module")
def tiny():
    return parse_model_spec(MODEL).load(device="cpu")


def arrays(project, split):
    group = zarr.open_group(published_folder(project, split), mode="r")
    return {name: group[name][:] for name in ("attn", "resid", "tokens", "seq_len", "example_id")}


def assert_same_arrays(ours, reference):
    """Every stored array of both splits of `ours` equals the reference project's."""
    for split in ("train", "test"):
        theirs = arrays(reference, split)
        for name, values in arrays(ours, split).items():
            np.testing.assert_array_equal(values, theirs[name])


def test_stored_rows_equal_the_model_run_on_each_example_alone(built, tiny):
    store = Store(built)
    prompts = store.sql("SELECT example_id, prompt FROM examples").set_index("example_id")["prompt"]
    for split in ("train", "test"):
        view = store.view("1_toy", split)
        attn, resid, tokens = view["attn"].values, view["resid"].values, view["tokens"].values
        for i in range(0, view.sizes["example"], 7):
            n = int(view["seq_len"][i])
            ids = tiny.encode([prompts[int(view["example_id"][i])]])[0]
            assert n == len(ids) and (tokens[i, :n] == ids).all() and (tokens[i, n:] == 0).all()
            with torch.inference_mode():
                _, cache = tiny.bridge.run_with_cache(torch.tensor(ids, dtype=torch.long)[None])
            for layer in range(tiny.n_layers):
                alone_attn = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, -1, :].float().numpy()
                alone_resid = cache[f"blocks.{layer}.hook_resid_post"][0, -1].float().numpy()
                np.testing.assert_allclose(attn[i, layer, :, :n], alone_attn, atol=2e-3)
                np.testing.assert_allclose(resid[i, layer], alone_resid, rtol=1e-2, atol=1e-2)
            assert (attn[i, :, :, n:] == 0).all()


def test_split_is_stored_in_length_order_and_features_table_maps_rows(built):
    store = Store(built)
    for split in ("train", "test"):
        stored = arrays(built, split)
        assert (np.diff(stored["seq_len"]) >= 0).all()
        rows = store.sql(
            "SELECT example_id, array_row, seq_len FROM features WHERE split = ? ORDER BY array_row", [split]
        )
        assert rows["example_id"].tolist() == stored["example_id"].tolist()
        assert rows["seq_len"].tolist() == stored["seq_len"].tolist()
        in_split = store.sql("SELECT example_id FROM examples WHERE split = ? ORDER BY 1", [split])["example_id"]
        assert sorted(stored["example_id"].tolist()) == in_split.tolist()


def test_view_is_lazy_and_test_split_reads_with_train_files_deleted(tmp_path):
    project = built_toy_project(tmp_path / "p")
    import shutil

    shutil.rmtree(published_folder(project, "train"))
    view = Store(project).view("1_toy", "test")
    assert hasattr(view["attn"].data, "dask")
    first = view["attn"].masked.first().compute()
    assert first.shape == (100, 2, 4)
    np.testing.assert_allclose(first.values, view["attn"].values[..., 0].astype(np.float32))
    sums = view["attn"].astype("float32").sum("token").values
    np.testing.assert_allclose(sums, 1.0, atol=5e-3)


def test_view_where_and_layers(built):
    store = Store(built)
    view = store.view("1_toy", "train", layers=[1], where="label = 1 AND seq_len < 40")
    expected = store.sql(
        "SELECT count(*) AS n FROM features f JOIN examples e USING (example_id) "
        "WHERE f.split = 'train' AND e.label = 1 AND f.seq_len < 40"
    )["n"][0]
    assert view.sizes["example"] == expected and view.sizes["layer"] == 1
    assert (view["label"] == 1).all() and (view["seq_len"] < 40).all()
    assert store.view("1_toy", "train", layers=[-1])["layer"].values.tolist() == [1]
    assert store.view("1_toy", "train", where="split = 'train' AND dataset = '1_toy'").sizes["example"] == 200
    with pytest.raises(FeatstoreError, match="list of layer numbers"):
        store.view("1_toy", "train", layers=1)
    with pytest.raises(FeatstoreError, match="layer"):
        store.view("1_toy", "train", layers=[5])
    for attack in ("1=1; DROP TABLE examples", "1=1) UNION SELECT 1; DROP TABLE examples; SELECT (1"):
        with pytest.raises(FeatstoreError, match="refused|query failed"):
            store.view("1_toy", "train", where=attack)
    assert store.sql("SELECT count(*) AS n FROM examples")["n"][0] == 300


def test_rerun_skips_and_other_settings_are_refused_without_overwrite(built, capsys):
    before = {s: os.stat(published_folder(built, s)).st_mtime_ns for s in ("train", "test")}
    assert build_features(built, MODEL, None, BuildSettings(device="cpu")) == 0
    assert main(["--root", str(built.root), "build", "--model", MODEL, "--max-len", "16"]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    after = {s: os.stat(published_folder(built, s)).st_mtime_ns for s in ("train", "test")}
    assert before == after


def test_truncation_keeps_the_last_tokens_and_bos(tmp_path, tiny):
    project = built_toy_project(tmp_path / "p", max_len=12)
    store = Store(project)
    rows = store.sql(
        "SELECT e.prompt, f.seq_len, f.n_tokens_source, f.truncated, f.array_row FROM features f "
        "JOIN examples e USING (example_id) WHERE f.split = 'test'"
    )
    tokens = arrays(project, "test")["tokens"]
    assert rows["truncated"].any() and (rows["seq_len"] <= 12).all()
    for row in rows.itertuples():
        ids = tiny.encode([row.prompt])[0]
        assert row.n_tokens_source == len(ids) and row.truncated == (len(ids) > 12)
        kept = np.concatenate([ids[:1], ids[-11:]]) if len(ids) > 12 else ids
        assert (tokens[row.array_row, : row.seq_len] == kept).all()


def test_build_killed_part_way_resumes_to_identical_arrays(toy_template, tmp_path, monkeypatch):
    reference = toy_template
    project = toy_project(tmp_path / "crashed")
    real_write = SplitWriter.record_shard

    def crash_after_first_shard(self, shard, *arrays):
        real_write(self, shard, *arrays)
        if shard == 0:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(SplitWriter, "record_shard", crash_after_first_shard)
    with pytest.raises(KeyboardInterrupt):
        build_features(project, MODEL, None, BuildSettings(device="cpu", writers=1))
    monkeypatch.undo()
    building = building_folder(project, "train")
    assert zarr.open_group(building, mode="r").attrs["shards_written"] == [0]
    with pytest.raises(FeatstoreError, match="no complete features"):
        Store(project).view("1_toy", "train")

    resumed_shards = []
    monkeypatch.setattr(
        SplitWriter, "record_shard", lambda self, shard, *a: (resumed_shards.append(shard), real_write(self, shard, *a))
    )
    build_features(project, MODEL, None, BuildSettings(device="cpu", writers=1))
    assert resumed_shards == [1, 0]  # train resumes at shard 1, then test builds its one shard
    assert_same_arrays(project, reference)


def _split_of(writer: SplitWriter) -> str:
    return writer.key.split("/")[3]  # features.zarr/<model>/<dataset>/<split>/<version>


def test_the_next_split_runs_while_the_one_before_is_finished(toy_template, tmp_path, monkeypatch):
    """The model does not wait for the writers between splits: the test split's forward passes start before the
    train split is published (slowed here), and both end up complete and equal to a build without the overlap."""
    reference = toy_template
    project = toy_project(tmp_path / "overlapped")
    events = []
    real_init, real_publish, real_launch = SplitWriter.__init__, SplitWriter.publish, build_module.launch_capture

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        events.append(("writer", _split_of(self)))

    def slow_publish(self):
        time.sleep(1.0)
        events.append(("published", _split_of(self)))
        return real_publish(self)

    def launch(*args, **kwargs):
        events.append(("forward",))
        return real_launch(*args, **kwargs)

    monkeypatch.setattr(SplitWriter, "__init__", init)
    monkeypatch.setattr(SplitWriter, "publish", slow_publish)
    monkeypatch.setattr(build_module, "launch_capture", launch)
    build_features(project, MODEL, None, BuildSettings(device="cpu"))
    test_started, train_published = events.index(("writer", "test")), events.index(("published", "train"))
    assert test_started < train_published
    assert ("forward",) in events[test_started:train_published]
    assert_same_arrays(project, reference)


def test_a_split_that_fails_to_finish_stops_the_build_and_publishes_nothing_after_it(tmp_path, monkeypatch):
    project = toy_project(tmp_path)
    real_publish = SplitWriter.publish

    def publish(self):
        if _split_of(self) == "train":
            raise OSError("simulated full disk")
        return real_publish(self)

    monkeypatch.setattr(SplitWriter, "publish", publish)
    with pytest.raises(OSError, match="simulated full disk"):
        build_features(project, MODEL, None, BuildSettings(device="cpu"))
    for split in ("train", "test"):
        with pytest.raises(FeatstoreError, match="no complete features"):
            Store(project).view("1_toy", split)


def test_parallel_writers_killed_mid_split_resume_to_the_arrays_of_one_writer_and_the_old_chunking(
    tmp_path, monkeypatch
):
    """Several writer threads and the large chunks against one writer and the chunks of stores built before:
    a kill after the third shard recorded leaves those shards recorded (and only whole ones), the rerun writes
    the rest, and every decoded array equals the old path's."""
    old = toy_project(tmp_path / "old", n=900)
    build_features(old, MODEL, None, BuildSettings(device="cpu", batch_tokens=256, writers=1, chunking=LEGACY_CHUNKING))
    new = toy_project(tmp_path / "new", n=900)
    real_record, recorded = SplitWriter.record_shard, []

    def kill_after_three(self, shard, entries):
        real_record(self, shard, entries)
        recorded.append(shard)
        if len(recorded) == 3:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(SplitWriter, "record_shard", kill_after_three)
    with pytest.raises(KeyboardInterrupt):
        build_features(new, MODEL, None, BuildSettings(device="cpu", batch_tokens=256, writers=3))
    monkeypatch.undo()
    group = zarr.open_group(building_folder(new, "train"), mode="r")
    assert sorted(group.attrs["shards_written"]) == sorted(recorded) and len(recorded) == 3
    assert group["attn"].chunks != zarr.open_group(published_folder(old, "train"), mode="r")["attn"].chunks
    build_features(new, MODEL, None, BuildSettings(device="cpu", batch_tokens=256, writers=3))
    assert_same_arrays(new, old)
    assert main(["--root", str(new.root), "verify"]) == 0


def test_sigkill_leaves_a_readable_store_and_rerun_completes(tmp_path):
    project = toy_project(tmp_path / "p", n=900)
    command = build_command(project, "--batch-tokens", "64")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_a_written_shard(process, project)
    assert process.poll() is None, "the build finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    store = Store(project)
    assert store.sql("SELECT count(*) AS n FROM features")["n"][0] == 0
    assert (
        main(["--root", str(project.root), "build", "--model", MODEL, "--device", "cpu", "--batch-tokens", "64"]) == 0
    )
    counts = store.sql(
        "SELECT split, count(*) AS n, count(DISTINCT example_id) AS ids FROM features GROUP BY split ORDER BY split"
    )
    expected = store.sql("SELECT split, count(*) AS n FROM examples GROUP BY split ORDER BY split")
    assert counts["n"].tolist() == counts["ids"].tolist() == expected["n"].tolist()
    assert store.view("1_toy", "train").sizes["example"] == expected["n"][1] > 128


def test_second_build_at_the_same_time_refuses_and_changes_nothing(built, capsys):
    before = Store(built).sql("SELECT * FROM features ORDER BY ALL")
    with exclusive_build(built.store_dir / BUILD_LOCK):
        assert main(["--root", str(built.root), "build", "--model", MODEL, "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another featstore build" in err
    assert Store(built).sql("SELECT * FROM features ORDER BY ALL").equals(before)


def test_concurrent_builds_neither_corrupt_nor_duplicate(toy_template, tmp_path):
    project = toy_project(tmp_path / "p")
    command = build_command(project)
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(p.wait(), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in outcomes)[0] == 0
    assert all(code == 0 or "another featstore build" in err for code, err in outcomes)
    reference = toy_template
    counts = Store(project).sql("SELECT count(*) AS n, count(DISTINCT (split, example_id)) AS ids FROM features")
    assert counts["n"][0] == counts["ids"][0] == 300
    assert_same_arrays(project, reference)


def test_unknown_dataset_and_unloadable_model_are_one_line_errors(built, capsys):
    assert main(["--root", str(built.root), "build", "--model", MODEL, "--datasets", "9_nope"]) == 1
    assert "dataset '9_nope' is not in the catalog" in capsys.readouterr().err
    assert main(["--root", str(built.root), "build", "--model", "./no/such/model", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_cleaning_waits_for_no_build_and_max_len_rules(built, capsys):
    with exclusive_build(built.store_dir / BUILD_LOCK):
        assert main(["--root", str(built.root), "datasets", "clean", "--seed", "7"]) == 1
    assert "another featstore build" in capsys.readouterr().err
    assert main(["--root", str(built.root), "build", "--model", MODEL, "--max-len", "128"]) == 0  # = the context
    assert main(["--root", str(built.root), "build", "--model", MODEL, "--max-len", "1", "--overwrite"]) == 1
    assert "outside 2..128" in capsys.readouterr().err


def test_features_of_other_weights_under_the_same_key_are_not_reused(built, monkeypatch, capsys):
    monkeypatch.setattr(
        build_module,
        "parse_model_spec",
        lambda spec: dataclasses.replace(parse_model_spec(spec), fingerprint="other weights"),
    )
    assert main(["--root", str(built.root), "build", "--model", MODEL]) == 1
    assert "pass --overwrite" in capsys.readouterr().err


def test_a_building_folder_killed_before_its_metadata_is_started_afresh(tmp_path):
    project = toy_project(tmp_path / "p")
    new_version_folder(project, "train").mkdir(parents=True)
    build_features(project, MODEL, None, BuildSettings(device="cpu"))
    assert Store(project).view("1_toy", "train").sizes["example"] == 200


def test_batches_of_short_rows_are_not_capped_by_the_shard_size(tmp_path, monkeypatch):
    project = init_project(tmp_path / "p")
    project.raw_dir.mkdir(parents=True)
    texts = [f"{'war' if i % 2 else 'sea'} {i:03d}" for i in range(300)]  # 8 bytes each
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(300)]}).to_csv(
        project.raw_dir / "short.csv", index=False
    )
    write_registry(project, [registry_row(1, "short", "short.csv")])
    clean_datasets(project, load_registry(project), SplitParams())
    batch_rows, real_capture = [], build_module.launch_capture

    def recording_capture(model, input_ids, lengths, **options):
        batch_rows.append(len(lengths))
        return real_capture(model, input_ids, lengths, **options)

    monkeypatch.setattr(build_module, "launch_capture", recording_capture)
    build_features(project, MODEL, None, BuildSettings(device="cpu", batch_tokens=100_000))
    assert max(batch_rows) > SHARD_EXAMPLES
    assert sum(batch_rows) == Store(project).sql("SELECT count(*) AS n FROM examples")["n"][0]


def test_both_captures_store_the_same_rows_and_the_one_used_is_recorded(built, tmp_path):
    """The default (last-row) build against a build with the bridge's pattern capture: tokens, lengths and order
    identical, attention rows at most one float16 step apart, residuals within float16 rounding."""
    by_pattern = built_toy_project(tmp_path / "pattern", capture="pattern")
    for split in ("train", "test"):
        fast, reference = arrays(built, split), arrays(by_pattern, split)
        for name in ("tokens", "seq_len", "example_id"):
            np.testing.assert_array_equal(fast[name], reference[name])
        ref_attn = reference["attn"].astype(np.float32)
        step = np.spacing(np.abs(reference["attn"])).astype(np.float32)
        assert np.all(np.abs(fast["attn"].astype(np.float32) - ref_attn) <= step)
        np.testing.assert_allclose(
            fast["resid"].astype(np.float32), reference["resid"].astype(np.float32), rtol=2e-3, atol=2e-3
        )
    recorded = Store(built).sql("SELECT DISTINCT settings FROM feature_splits")["settings"]
    assert [json.loads(settings)["capture"] for settings in recorded] == ["last-row"]
    assert build_features(built, MODEL, None, BuildSettings(device="cpu", capture="pattern")) == 0  # same numbers


def test_unknown_capture_is_refused_by_the_command_line(built, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(built.root), "build", "--model", MODEL, "--capture", "fast"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


@pytest.mark.parametrize("free_gib, expected", [(0.05, 8192), (0.25, 16384), (0.4, 32768), (140, 65536)])
def test_gpu_batch_budget_follows_free_memory_and_cpu_keeps_2048(tiny, monkeypatch, free_gib, expected):
    """random:tiny costs 4 x (16 x 64 + 4 x 128) = 6,144 bytes a token: half of 0.25 GiB holds 21,845 of them
    (16,384 is the power of two below), half of 0.05 GiB fewer than the floor of 8,192, 140 GiB far more than the
    ceiling."""
    assert default_batch_tokens(tiny) == CPU_BATCH_TOKENS == 2048
    gpu = dataclasses.replace(tiny, device=torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (int(free_gib * 2**30), 141 * 2**30))
    assert default_batch_tokens(gpu) == expected
