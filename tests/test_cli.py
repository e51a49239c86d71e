"""Command-line conventions: --help everywhere, quiet success, one-line errors, meaningful exit codes."""

import json
import subprocess
import sys

import pytest

from featstore.cli import build_parser, main

COMMANDS = [
    [],
    ["init"],
    ["datasets"],
    ["datasets", "clean"],
    ["datasets", "import-sae-probes"],
    ["datasets", "list"],
    ["sql"],
    ["build"],
    ["probe"],
    ["results"],
    ["report"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "featstore")
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: featstore" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["build", "probe"])
def test_build_and_probe_both_require_a_model(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["build", "--limit", "many"])
    assert exit_info.value.code == 2


def test_init_then_clean_and_sql_are_quiet_and_formats_parse(tmp_path, project, capsys):
    assert main(["init", str(tmp_path / "fresh")]) == 0
    assert (tmp_path / "fresh" / "datasets" / "main.csv").is_file()
    assert main(["--root", str(project.root), "datasets", "clean"]) == 0
    assert capsys.readouterr() == ("", "")
    query = "SELECT split, count(*) AS n FROM examples GROUP BY split ORDER BY split"
    assert main(["--root", str(project.root), "sql", query, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"split": "test", "n": 100}, {"split": "train", "n": 200}]
    assert main(["--root", str(project.root), "sql", query, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["split,n", "test,100", "train,200"]
    assert main(["--root", str(project.root), "datasets", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["dataset", "n", "n_train", "n_test"] and listing[1].split()[:4] == [
        "1_toy",
        "300",
        "200",
        "100",
    ]


def test_errors_are_one_line_on_stderr_with_exit_1(tmp_path, project, capsys):
    assert main(["--root", str(tmp_path / "nowhere"), "datasets", "list"]) == 1
    assert main(["--root", str(project.root), "sql", "DELETE FROM examples"]) == 1
    errors = capsys.readouterr()
    assert errors.out == ""
    lines = errors.err.splitlines()
    assert len(lines) == 2 and all(line.startswith("featstore: error: ") for line in lines)
    assert "not a featstore project" in lines[0]


def test_console_entry_point_runs():
    completed = subprocess.run([sys.executable, "-m", "featstore.cli", "--version"], capture_output=True, text=True)
    assert completed.returncode == 0 and completed.stdout.startswith("featstore ")


def test_init_where_a_file_stands_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["init", str(tmp_path / "afile" / "sub")]) == 1
    assert capsys.readouterr().err.startswith("featstore: error: cannot create a project at ")
