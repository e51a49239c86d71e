"""Cleaning registry rows into cleaned files and catalog rows, and every bad-input case."""

import duckdb
import pandas as pd
import pytest

from featstore.cli import main
from tests.factories import registry_row, toy_raw, write_registry


def catalog_rows(project, query):
    con = duckdb.connect(str(project.catalog_path), read_only=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def clean(project, *extra):
    return main(["--root", str(project.root), "datasets", "clean", *extra])


def test_clean_writes_cleaned_file_and_catalog(project):
    assert clean(project) == 0
    cleaned = pd.read_csv(project.cleaned_path("1_toy"))
    raw = toy_raw()
    assert list(cleaned.columns) == ["prompt", "target", "row"]
    assert cleaned["prompt"].tolist() == raw["text"].tolist()
    assert cleaned["target"].tolist() == raw["label"].tolist()
    [(n, n_pos, n_train, n_test)] = catalog_rows(project, "SELECT n_examples, n_pos, n_train, n_test FROM datasets")
    assert (n, n_pos) == (300, raw["label"].sum())
    assert n_train == 2 * min(200 // 2, min(n_pos, 300 - n_pos) - 1) and n_test == 300 - n_train
    rows = catalog_rows(project, 'SELECT example_id, "row", label, prompt, n_chars FROM examples ORDER BY "row"')
    assert [r[0] for r in rows] == [1_000_000_000 + i for i in range(300)]
    assert all(r[3] == raw["text"][r[1]] and r[4] == len(r[3]) and r[2] == raw["label"][r[1]] for r in rows)


def test_clean_is_idempotent_and_overwrite_rebuilds(project):
    assert clean(project) == 0
    first_mtime = project.cleaned_path("1_toy").stat().st_mtime_ns
    first = catalog_rows(project, "SELECT example_id, split FROM examples ORDER BY 1")
    assert clean(project) == 0
    assert project.cleaned_path("1_toy").stat().st_mtime_ns == first_mtime
    assert clean(project, "--overwrite") == 0
    assert project.cleaned_path("1_toy").stat().st_mtime_ns != first_mtime
    assert catalog_rows(project, "SELECT example_id, split FROM examples ORDER BY 1") == first


def test_changed_extraction_is_recleaned(project):
    assert clean(project) == 0
    write_registry(project, [registry_row(1, "toy", "toy.csv", **{"Probe to extraction": "col == 0"})])
    assert clean(project) == 0
    assert pd.read_csv(project.cleaned_path("1_toy"))["target"].tolist() == (1 - toy_raw()["label"]).tolist()


def test_expression_extraction(project):
    write_registry(
        project,
        [registry_row(1, "toy", "toy.csv", **{"Probe to": "text", "Probe to extraction": 'col.str.contains("war")'})],
    )
    assert clean(project) == 0
    assert pd.read_csv(project.cleaned_path("1_toy"))["target"].tolist() == toy_raw()["label"].tolist()


def bad_case(project, rows=None, raw=None, registry_text=None):
    if raw is not None:
        raw.to_csv(project.raw_dir / "bad.csv", index=False)
    if rows is not None:
        write_registry(project, [registry_row(1, "toy", "toy.csv"), *rows])
    if registry_text is not None:
        project.registry_path.write_text(registry_text)


BAD_INPUTS = {
    "malformed csv": (dict(registry_text='number,"Dataset Tag\n1,"toy\n2,x,y,z,w\n'), "main.csv"),
    "missing column in registry": (dict(registry_text="number,Dataset Tag\n1,toy\n"), "lacks the column"),
    "missing source file": (dict(rows=[registry_row(2, "gone", "nope.csv")]), "nope.csv does not exist"),
    "missing source column": (
        dict(rows=[registry_row(2, "b", "bad.csv", **{"Probe from": "body"})], raw=toy_raw()),
        "column 'body'",
    ),
    "labels not binary": (
        dict(rows=[registry_row(2, "b", "bad.csv", **{"Probe to": "stars"})], raw=toy_raw()),
        "not binary",
    ),
    "string labels": (dict(rows=[registry_row(2, "b", "bad.csv")], raw=toy_raw().assign(label="yes")), "not binary"),
    "empty prompt": (
        dict(rows=[registry_row(2, "b", "bad.csv")], raw=toy_raw().assign(text=["x", "   "] + ["x"] * 298)),
        "empty prompt in raw row 1",
    ),
    "missing prompt": (
        dict(rows=[registry_row(2, "b", "bad.csv")], raw=toy_raw().assign(text=[None] * 5 + ["x"] * 295)),
        "missing or empty prompt in raw row 0",
    ),
    "numeric prompts": (
        dict(rows=[registry_row(2, "b", "bad.csv", **{"Probe from": "stars"})], raw=toy_raw()),
        "is not text",
    ),
    "missing label": (
        dict(rows=[registry_row(2, "b", "bad.csv")], raw=toy_raw().assign(label=[None] + [1, 0] * 149 + [1])),
        "missing label",
    ),
    "duplicate number": (dict(rows=[registry_row(1, "other", "toy.csv")]), "number 1 is already used"),
    "duplicate tag": (dict(rows=[registry_row(2, "toy", "toy.csv")]), "tag 'toy' is already used"),
    "bad number": (dict(rows=[registry_row("x2", "b", "toy.csv")]), "not a whole number"),
    "unsafe expression": (
        dict(rows=[registry_row(2, "b", "toy.csv", **{"Probe to extraction": "__import__('os')"})]),
        "line 3 (2_b)",
    ),
    "unsupported data type": (
        dict(rows=[registry_row(2, "b", "toy.csv", **{"Data type": "Continuous Data"})]),
        "not supported",
    ),
    "source outside raw": (dict(rows=[registry_row(2, "b", "../main.csv")]), "must be a file name"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_error_and_nothing_is_written(project, capsys, case):
    setup, expected = BAD_INPUTS[case]
    bad_case(project, **setup)
    assert clean(project) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("featstore: error: ")
    assert expected in err
    assert not project.cleaned_dir.exists() or not list(project.cleaned_dir.iterdir())
    assert not project.catalog_path.exists() or catalog_rows(project, "SELECT count(*) FROM datasets") == [(0,)]


def test_a_bad_row_leaves_earlier_clean_results_untouched(project):
    assert clean(project) == 0
    before = catalog_rows(project, "SELECT * FROM examples ORDER BY 1")
    toy_raw().assign(label=5).to_csv(project.raw_dir / "bad.csv", index=False)
    write_registry(
        project,
        [registry_row(1, "toy", "toy.csv", **{"Probe to extraction": "col == 0"}), registry_row(2, "b", "bad.csv")],
    )
    assert clean(project) == 1
    assert catalog_rows(project, "SELECT * FROM examples ORDER BY 1") == before
    assert pd.read_csv(project.cleaned_path("1_toy"))["target"].tolist() == toy_raw()["label"].tolist()
    assert sorted(p.name for p in project.cleaned_dir.iterdir()) == ["1_toy.csv"]
