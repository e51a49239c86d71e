"""Dataset names: the exact name selects, a number or tag only when unambiguous, unknown names suggest the closest;
the same resolver in clean, build, probe, results, report and views (issue 8 case 3, issue 12 part 5)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from featstore.api import Store
from featstore.catalog.names import DatasetNames
from featstore.catalog.splits import SplitParams
from featstore.cli import main
from featstore.datasets.cleaning import clean_datasets
from featstore.datasets.registry import load_registry
from featstore.errors import FeatstoreError
from featstore.extraction.build import build_features
from featstore.extraction.plan import BuildSettings
from featstore.project import Project, init_project
from tests.builders import MODEL
from tests.factories import registry_row, toy_raw, write_registry

CLASHING = [(5, "x"), (900, "5"), (901, "900_5")]  # `5` is 5_x's number and 900_5's tag; `900_5` is 901_900_5's tag


def clashing_project(root: Path) -> Project:
    """Registry rows whose numbers, tags and names overlap (issue 8 case 3), not yet cleaned."""
    project = init_project(root)
    project.raw_dir.mkdir(parents=True)
    toy_raw(150).to_csv(project.raw_dir / "toy.csv", index=False)
    write_registry(project, [registry_row(number, tag, "toy.csv") for number, tag in CLASHING])
    return project


@pytest.fixture(scope="module")
def clashing_built(tmp_path_factory) -> Project:
    """The clashing datasets cleaned and built (a few examples each); treat as read-only."""
    project = clashing_project(tmp_path_factory.mktemp("names") / "p")
    clean_datasets(project, load_registry(project), SplitParams())
    build_features(project, MODEL, None, BuildSettings(device="cpu", limit=16))
    return project


def run(project: Project, *args: str) -> int:
    return main(["--root", str(project.root), *args])


def indexed_at(project: Project) -> dict[str, object]:
    return dict(Store(project).sql("SELECT name, indexed_at FROM datasets").itertuples(index=False))


NAMES = DatasetNames(
    ("5_x", "900_5", "901_900_5", "87_glue_cola"), ("5", "900", "901", "87"), ("x", "5", "900_5", "glue_cola")
)


@pytest.mark.parametrize(
    "given, expected",
    [("900_5", "900_5"), ("901", "901_900_5"), ("x", "5_x"), ("glue_cola", "87_glue_cola"), ("87", "87_glue_cola")],
)
def test_exact_name_first_then_an_unambiguous_number_or_tag(given, expected):
    assert NAMES.resolve(given) == expected


def test_ambiguous_and_unknown_names_are_one_line_errors_naming_candidates():
    with pytest.raises(
        FeatstoreError,
        match=r"^dataset '5' is ambiguous: it could be 5_x \(by number\), "
        r"900_5 \(by tag\); give the full name$",
    ):
        NAMES.resolve("5")
    with pytest.raises(
        FeatstoreError, match=r"^dataset '87_glue_cloa' is not in the catalog; did you mean 87_glue_cola\?$"
    ):
        NAMES.resolve("87_glue_cloa")
    with pytest.raises(FeatstoreError, match=r"'glue_cloa' is not in the catalog; did you mean 87_glue_cola\?$"):
        NAMES.resolve("glue_cloa")
    with pytest.raises(FeatstoreError, match=r"^dataset 'zzz' is not in the catalog$"):
        NAMES.resolve("zzz")
    assert NAMES.resolve_all(["87", "glue_cola", "x"]) == ["87_glue_cola", "5_x"]


def test_clean_by_an_ambiguous_number_cleans_nothing(tmp_path, capsys):
    project = clashing_project(tmp_path / "p")
    assert run(project, "datasets", "clean", "--datasets", "5") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset '5' is ambiguous" in err and "5_x" in err and "900_5" in err
    assert not project.catalog_path.exists() and not project.cleaned_dir.exists()


def test_clean_by_exact_name_recleans_that_dataset_only(tmp_path):
    project = clashing_project(tmp_path / "p")
    assert run(project, "datasets", "clean") == 0
    before = indexed_at(project)
    assert run(project, "datasets", "clean", "--overwrite", "--datasets", "900_5") == 0
    after = indexed_at(project)
    assert [name for name in before if after[name] != before[name]] == ["900_5"]
    assert run(project, "datasets", "clean", "--overwrite", "--datasets", "901", "x") == 0
    assert sorted(name for name in after if indexed_at(project)[name] != after[name]) == ["5_x", "901_900_5"]


def test_build_probe_results_report_and_views_share_the_resolver(clashing_built, tmp_path, capsys):
    shutil.copytree(clashing_built.root, tmp_path / "p")
    project = Project(tmp_path / "p")
    for command in (
        ["build", "--model", MODEL, "--limit", "16", "--device", "cpu", "--datasets", "5"],
        ["probe", "--model", MODEL, "--feature", "length", "--datasets", "5"],
        ["results", "--datasets", "5"],
        ["report", "--out", str(tmp_path / "report"), "--datasets", "5"],
    ):
        assert run(project, *command) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "dataset '5' is ambiguous" in err, command
    with pytest.raises(FeatstoreError, match="dataset '5' is ambiguous"):
        Store(project).view("5", "train")
    assert run(project, "probe", "--model", MODEL, "--feature", "length", "--datasets", "900_5") == 0
    assert Store(project).sql("SELECT dataset FROM probe_results")["dataset"].tolist() == ["900_5"]
    assert Store(project).view("900_5", "test").attrs["dataset"] == "900_5"
    assert Store(project).view("901", "test").attrs["dataset"] == "901_900_5"
    capsys.readouterr()
    assert run(project, "results", "--datasets", "900_5", "--format", "csv") == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("900_5,")
    assert run(project, "results", "--datasets", "x") == 1
    assert "no probe results of 5_x" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, expected",
    [
        (
            ["probe", "--model", MODEL, "--datasets", "900_tag5"],
            "dataset '900_tag5' is not in the catalog; did you mean 900_5?",
        ),
        (
            ["probe", "--model", "random:tny"],
            "no features of model 'random:tny' in this store (models with features: "
            "random:tiny); did you mean random:tiny?",
        ),
        (["build", "--model", MODEL, "--datasets", "5_xx"], "dataset '5_xx' is not in the catalog; did you mean 5_x?"),
        (["results", "--model", "gpt2-medium"], "no probe results of model 'gpt2-medium' in this store"),
        (
            ["results", "--datasets", "901_900_55"],
            "dataset '901_900_55' is not in the catalog; did you mean 901_900_5 or 900_5?",
        ),
    ],
)
def test_unknown_names_are_errors_suggesting_the_closest(clashing_built, capsys, command, expected):
    assert run(clashing_built, *command) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and expected in captured.err
    assert "run `featstore build" not in captured.err


@pytest.mark.parametrize(
    "args, expected",
    [
        (("900_tag5", "train"), "dataset '900_tag5' is not in the catalog; did you mean 900_5?"),
        (("900_5", "validation"), "no split 'validation': features are built for train and test"),
        (("900_5", "tset"), "did you mean test?"),
        (("900_5", "train", "random:tny"), "no features of model 'random:tny'"),
    ],
)
def test_views_name_what_does_not_exist(clashing_built, args, expected):
    with pytest.raises(FeatstoreError) as raised:
        Store(clashing_built).view(*args)
    assert expected in str(raised.value) and "run `featstore build" not in str(raised.value)


def test_datasets_list_shows_what_is_built_per_model(clashing_built, capsys):
    assert run(clashing_built, "datasets", "list") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[-1] == "built" and [row.split()[-1] for row in rows] == [MODEL] * 3
