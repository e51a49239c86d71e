"""Successes that did nothing say so in one line on stderr (exit 0, stdout empty); real work stays quiet."""

from featstore.cli import main
from tests.builders import MODEL


def run(project, capsys, *argv):
    code = main(["--root", str(project.root), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_build_of_built_splits_says_nothing_to_do(toy_copy, capsys):
    assert run(toy_copy, capsys, "build", "--model", MODEL) == (
        0,
        "",
        f"featstore: nothing to do: every requested split is already built for {MODEL} "
        "(--overwrite rebuilds, --repair fixes what verify finds damaged)\n",
    )


def test_probe_says_nothing_to_do_only_when_every_combination_is_fitted(toy_copy, capsys):
    probe = ["probe", "--model", MODEL, "--feature", "length"]
    assert run(toy_copy, capsys, *probe) == (0, "", "")
    assert run(toy_copy, capsys, *probe) == (
        0,
        "",
        "featstore: nothing to do: every one of the 1 combination(s) is already in probe_results "
        "(--overwrite-train refits, --overwrite-eval re-scores)\n",
    )
    assert run(toy_copy, capsys, *probe, "--overwrite-eval") == (0, "", "")


def test_clean_of_unchanged_inputs_says_nothing_to_do(project, capsys):
    assert run(project, capsys, "datasets", "clean") == (0, "", "")
    code, out, err = run(project, capsys, "datasets", "clean")
    assert (code, out) == (0, "") and err.startswith("featstore: nothing to do: every dataset is cleaned")
