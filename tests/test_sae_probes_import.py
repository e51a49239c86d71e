"""Importing the SAE-Probes benchmark: from a wheel, a directory, and the installed distribution."""

import importlib.metadata
import io
import subprocess
import zipfile

import duckdb
import pandas as pd
import pytest

from featstore.catalog.splits import SplitParams
from featstore.cli import main
from featstore.datasets.registry import load_registry
from featstore.datasets.sae_probes import import_sae_probes
from featstore.errors import FeatstoreError
from featstore.project import init_project


def zst_csv(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_csv(buffer, index=False, compression={"method": "zstd"})
    return buffer.getvalue()


def fake_data_files(n: int = 240) -> dict[str, bytes]:
    """Three binary datasets (string, boolean and 0/1 labels) and one continuous one."""
    master = pd.DataFrame(
        {
            "Source": ["", "", "", ""],
            "Dataset Tag": ["truth_tf", "is_short", "glue_toy", "temperature"],
            "Dataset save name": [
                f"cleaned_data/{s}.csv" for s in ("41_truth_tf", "49_is_short", "87_glue_toy", "3_temperature")
            ],
            "Probe from": ["statement", "text", "sentence", "city"],
            "Probe to": ["t/f", "short?", "label", "degrees"],
            "Data type": ["Binary Classification"] * 3 + ["Continuous Data"],
        }
    )
    prompts = [f"example {i}" for i in range(n)]
    return {
        "probing_datasets_MASTER.csv.zst": zst_csv(master),
        "cleaned_data/41_truth_tf.csv.zst": zst_csv(
            pd.DataFrame({"prompt": prompts, "target": ["incorrect", "correct"] * (n // 2)})
        ),
        "cleaned_data/49_is_short.csv.zst": zst_csv(
            pd.DataFrame({"prompt": prompts, "target": [True, False] * (n // 2)})
        ),
        "cleaned_data/87_glue_toy.csv.zst": zst_csv(
            pd.DataFrame({"prompt": prompts, "prompt_len": 9, "target": [0, 1] * (n // 2)})
        ),
        "cleaned_data/3_temperature.csv.zst": zst_csv(pd.DataFrame({"prompt": prompts, "target": range(n)})),
    }


@pytest.fixture
def fake_wheel(tmp_path):
    wheel = tmp_path / "sae_probes-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("sae_probes/__init__.py", "raise RuntimeError('must not be imported')\n")
        for name, payload in fake_data_files().items():
            archive.writestr(f"sae_probes/data/{name}", payload)
    return wheel


def test_import_from_wheel_registers_binary_datasets_with_label_encoder_labels(tmp_path, fake_wheel):
    project = init_project(tmp_path / "p")
    assert main(["--root", str(project.root), "datasets", "import-sae-probes", "--source", str(fake_wheel)]) == 0
    names = [e.name for e in load_registry(project)]
    assert names == ["41_truth_tf", "49_is_short", "87_glue_toy"]
    truth = pd.read_csv(project.cleaned_path("41_truth_tf"))
    assert truth["target"].tolist()[:4] == [1, 0, 1, 0]  # LabelEncoder: correct=0, incorrect=1
    assert pd.read_csv(project.cleaned_path("49_is_short"))["target"].tolist()[:2] == [1, 0]
    con = duckdb.connect(str(project.catalog_path), read_only=True)
    assert con.execute("SELECT count(DISTINCT dataset) FROM examples").fetchone() == (3,)
    con.close()


def test_import_from_directory_with_only_and_reimport_keeps_user_rows(tmp_path):
    data_dir = tmp_path / "unpacked" / "sae_probes" / "data"
    for name, payload in fake_data_files().items():
        (data_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / name).write_bytes(payload)
    project = init_project(tmp_path / "p")
    import_sae_probes(project, tmp_path / "unpacked", ["glue_toy"], SplitParams(max_train=64))
    user = pd.read_csv(project.registry_path, dtype=str, keep_default_na=False)
    user.loc[len(user)] = {
        **{c: "" for c in user.columns},
        "number": "900",
        "Dataset Tag": "mine",
        "source": "87_glue_toy.csv.zst",
        "Probe from": "prompt",
        "Probe to": "target",
        "Data type": "Binary Classification",
    }
    user.to_csv(project.registry_path, index=False)
    import_sae_probes(project, tmp_path / "unpacked", ["87", "41_truth_tf"], SplitParams(max_train=64))
    assert [e.name for e in load_registry(project)] == ["87_glue_toy", "900_mine", "41_truth_tf"]


def test_import_refuses_unknown_names_and_number_clashes(tmp_path, fake_wheel):
    project = init_project(tmp_path / "p")
    with pytest.raises(FeatstoreError, match="'3_temperature' is not an SAE-Probes binary dataset"):
        import_sae_probes(project, fake_wheel, ["3_temperature"], SplitParams())
    project.registry_path.write_text(
        project.registry_path.read_text() + "87,,,mine,,,prompt,target,Binary Classification,,x.csv,col,col\n"
    )
    with pytest.raises(FeatstoreError, match="already uses number 87"):
        import_sae_probes(project, fake_wheel, None, SplitParams())
    assert not project.cleaned_dir.exists()


def test_import_refuses_a_broken_source(tmp_path):
    project = init_project(tmp_path / "p")
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    with pytest.raises(FeatstoreError, match="not a readable wheel"):
        import_sae_probes(project, tmp_path / "broken.whl", None, SplitParams())
    with pytest.raises(FeatstoreError, match="holds no probing_datasets_MASTER"):
        import_sae_probes(project, tmp_path, None, SplitParams())


def test_real_benchmark_registers_113_datasets_with_protocol_splits(tmp_path, capsys):
    """The installed sae-probes distribution (installed --no-deps by `make setup`)."""
    importlib.metadata.distribution("sae-probes")
    project = init_project(tmp_path / "p")
    assert main(["--root", str(project.root), "datasets", "import-sae-probes"]) == 0
    assert len(load_registry(project)) == 113
    assert (
        main(
            [
                "--root",
                str(project.root),
                "sql",
                "--format",
                "csv",
                "SELECT dataset, split, count(*) AS n, avg(label) AS pos FROM examples WHERE split <> 'unused' "
                "GROUP BY ALL",
            ]
        )
        == 0
    )
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    totals = frame.groupby("dataset")["n"].sum()
    train = frame[frame["split"] == "train"].set_index("dataset")
    assert len(train) == 113
    assert (train["pos"] == 0.5).all()
    assert (train["n"] == (totals.loc[train.index] - 100).clip(upper=1024)).all()


def test_without_source_or_installation_the_wheel_is_fetched_with_pip_download(tmp_path, fake_wheel, monkeypatch):
    from featstore.datasets import sae_probes

    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        destination = command[command.index("--dest") + 1]
        (tmp_path / destination).mkdir(parents=True, exist_ok=True)
        (tmp_path / destination / fake_wheel.name).write_bytes(fake_wheel.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(sae_probes.PackageData, "installed", classmethod(lambda cls: None))
    monkeypatch.setattr(sae_probes.subprocess, "run", fake_pip)
    project = init_project(tmp_path / "p")
    import_sae_probes(project, None, ["87"], SplitParams(max_train=64))
    import_sae_probes(project, None, ["41"], SplitParams(max_train=64))
    assert len(calls) == 1 and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert [e.name for e in load_registry(project)] == ["87_glue_toy", "41_truth_tf"]


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    from featstore.datasets import sae_probes

    monkeypatch.setattr(sae_probes.PackageData, "installed", classmethod(lambda cls: None))
    monkeypatch.setattr(
        sae_probes.subprocess,
        "run",
        lambda command, **kw: subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution\n"),
    )
    with pytest.raises(
        FeatstoreError, match="could not download sae-probes with pip .*No matching distribution.*--source"
    ):
        import_sae_probes(init_project(tmp_path / "p"), None, None, SplitParams())
