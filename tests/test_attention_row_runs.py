"""The learned attention-row probe through `featstore probe`: a refit replaces its probe file and its folder of
learning curves, and Ctrl-C while it trains stops the run like any other probe's (exit 130, one line)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from featstore.api import Store
from featstore.cli import EXIT_INTERRUPTED, main
from featstore.probing import families
from probes import AttentionRowProbe
from probes.row_network import RowWeighting
from tests.builders import MODEL

QUICK = """
import os, signal, sys
from featstore.cli import main
from featstore.probing import families
from probes import AttentionRowProbe
from probes.row_network import RowWeighting
quick = families.FAMILIES["attention-row"]
families.FAMILIES["attention-row"] = families.ProbeFamily(
    "rows", lambda seed: AttentionRowProbe(random_state=seed, max_epochs=50, patience=50), quick.summary)
real_forward, calls = RowWeighting.forward, [0]
def forward(self, *args):
    calls[0] += 1
    if calls[0] == 5:
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, in the middle of training
    return real_forward(self, *args)
RowWeighting.forward = forward
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def quick_rows(monkeypatch):
    """The attention-row family with a few epochs, so a fit takes seconds."""
    family = families.FAMILIES["attention-row"]
    monkeypatch.setitem(
        families.FAMILIES,
        "attention-row",
        families.ProbeFamily(
            "rows", lambda seed: AttentionRowProbe(random_state=seed, max_epochs=3, patience=2), family.summary
        ),
    )


def row_probe(project, *args):
    return main(["--root", str(project.root), "probe", "--model", MODEL, "--probe", "attention-row", *args])


def test_a_refit_replaces_the_probe_file_and_its_learning_curves_folder(toy_copy, quick_rows, capsys):
    assert row_probe(toy_copy) == 0
    first = Store(toy_copy).sql("SELECT probe_path FROM probe_results")["probe_path"][0]
    old_logs = (toy_copy.store_dir / first).with_suffix(".logs")
    assert (old_logs / "fold-0" / "metrics.csv").is_file()
    capsys.readouterr()
    assert row_probe(toy_copy, "--overwrite-train") == 0
    assert capsys.readouterr().err == ""
    second = Store(toy_copy).sql("SELECT probe_path FROM probe_results")["probe_path"]
    assert len(second) == 1 and second[0] != first
    new = toy_copy.store_dir / second[0]
    assert (new.with_suffix(".logs") / "fold-0" / "metrics.csv").is_file()
    assert {p.name for p in new.parent.iterdir()} == {new.name, new.with_suffix(".logs").name}  # the old pair is gone


def test_ctrl_c_while_it_trains_is_interrupted_like_any_probe(toy_copy, quick_rows, monkeypatch, capsys):
    real_forward, calls = RowWeighting.forward, [0]

    def forward(self, *args):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt  # what Ctrl-C raises, in the middle of an epoch
        return real_forward(self, *args)

    monkeypatch.setattr(RowWeighting, "forward", forward)
    handler = signal.getsignal(signal.SIGINT)
    assert row_probe(toy_copy) == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "featstore: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning set SIGINT to be ignored; it is restored
    assert Store(toy_copy).sql("SELECT count(*) AS n FROM probe_results")["n"][0] == 0
    assert not list((toy_copy.store_dir / "probes").rglob("*.safetensors"))


def test_a_real_sigint_while_it_trains_exits_130_with_one_line(toy_copy):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            QUICK,
            "--root",
            str(toy_copy.root),
            "probe",
            "--model",
            MODEL,
            "--probe",
            "attention-row",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert (done.returncode, done.stderr) == (EXIT_INTERRUPTED, "featstore: interrupted\n")
    assert Store(toy_copy).sql("SELECT count(*) AS n FROM probe_results")["n"][0] == 0
