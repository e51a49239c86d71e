"""A probe run stopped at any moment (Ctrl-C, kill -9) or run twice at once: every recorded row has its saved
probe, nothing is staged or orphaned after the next run, and no finished result is lost."""

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featstore.api import Store
from featstore.catalog.database import catalog_writer
from featstore.cli import EXIT_INTERRUPTED, main
from featstore.probing import persist, probe_files, runner
from probes import load_probe
from tests.builders import MODEL

SETTINGS = ["--feature", "length", "--probe", "logreg", "mass-mean", "mass-mean-lda"]  # three quick combinations
TRACED = {Path(persist.__file__).name, Path(probe_files.__file__).name, "probe_records.py", "locking.py", "database.py"}
KILL_AT = """
import os, signal, sys
from featstore.cli import main
from featstore.probing import persist
from featstore.store.location import LocalLocation
point, real_commit = sys.argv[1], persist.replace_probe_results
def commit(*args, **kwargs):
    if point == "before-commit":
        os.kill(os.getpid(), signal.SIGKILL)
    real_commit(*args, **kwargs)
    if point == "after-commit":
        os.kill(os.getpid(), signal.SIGKILL)
def put_half(self, path, key):
    staged = self.path(key).with_name(f".{self.path(key).name}.staged")
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"half a probe")
    os.kill(os.getpid(), signal.SIGKILL)
persist.replace_probe_results = commit
if point == "mid-dump":
    LocalLocation.put_file = put_half
main(sys.argv[2:])
"""
BOTH_AT_THE_WRITE = """
import sys, time
from pathlib import Path
from featstore.cli import main
from featstore.probing import runner
barrier, real_write = Path(sys.argv[1]), runner.write_fits
def write(*args, **kwargs):
    (barrier / sys.argv[2]).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.01)
    return real_write(*args, **kwargs)
runner.write_fits = write
sys.exit(main(sys.argv[3:]))
"""


def probe_args(project, *args):
    return ["--root", str(project.root), "probe", "--model", MODEL, *SETTINGS, *args]


def rows(project):
    return Store(project).sql("SELECT * FROM probe_results ORDER BY result_id")


def assert_every_row_has_its_probe(project):
    for row in rows(project).itertuples():
        saved = load_probe(project.store_dir / row.probe_path)
        assert saved.n_features_in_ == row.n_features


def assert_nothing_orphaned(project):
    referenced = {project.store_dir / path for path in rows(project)["probe_path"]}
    assert set((project.store_dir / "probes").rglob("*.safetensors")) == referenced
    assert not [p for p in (project.store_dir / "probes").rglob("*") if p.name.endswith(".staged")]


def interrupt_at_line(moment):
    """A tracer raising KeyboardInterrupt (what Ctrl-C raises) at the `moment`-th line run in the probe writer's
    modules; with moment None it only counts them. (Before the write nothing is on disk to damage, and real
    signals at random delays below land there.)"""
    count = [0]

    def lines(frame, event, arg):
        if event == "line":
            count[0] += 1
            if count[0] == moment:
                raise KeyboardInterrupt
        return lines

    def calls(frame, event, arg):
        return lines if Path(frame.f_code.co_filename).name in TRACED else None

    return calls, count


def run_traced(project, moment, *args):
    """Run the probe command with the tracer on from the start of the write (files, catalog, clean-up)."""
    tracer, count = interrupt_at_line(moment)
    real_write = runner.write_fits

    def traced_write(*write_args):
        sys.settrace(tracer)
        return real_write(*write_args)

    runner.write_fits = traced_write
    try:
        code = main(probe_args(project, *args))
    finally:
        sys.settrace(None)
        runner.write_fits = real_write
    return code, count[0]


def test_ctrl_c_at_many_moments_leaves_every_row_with_its_probe_and_loses_nothing(toy_copy):
    code, n_lines = run_traced(toy_copy, None)
    assert code == 0 and len(rows(toy_copy)) == 3
    moments = sorted(random.Random(0).sample(range(1, n_lines), min(8, n_lines - 1)))
    for moment in moments:
        code, _ = run_traced(toy_copy, moment, "--overwrite-train")
        assert code == EXIT_INTERRUPTED, moment
        assert len(rows(toy_copy)) == 3, moment
        assert_every_row_has_its_probe(toy_copy)
    assert_a_rerun_recovers_everything(toy_copy)


def assert_a_rerun_recovers_everything(project):
    """A re-scoring run after an interruption succeeds with all three rows, each with its file, and no orphans."""
    assert main(probe_args(project, "--overwrite-eval")) == 0
    assert len(rows(project)) == 3
    assert_every_row_has_its_probe(project)
    assert_nothing_orphaned(project)


def forget_results(project):
    with catalog_writer(project) as con:
        con.execute("DELETE FROM probe_scores; DELETE FROM probe_head_weights; DELETE FROM probe_results")
    shutil.rmtree((project.store_dir / "probes"), ignore_errors=True)


def test_ctrl_c_at_every_line_of_the_write_commits_all_or_nothing_and_rows_only_with_files(toy_copy):
    writes = []
    real_write = runner.write_fits
    runner.write_fits = lambda *args: (writes.append(args), real_write(*args))[1]
    try:
        assert main(probe_args(toy_copy)) == 0
    finally:
        runner.write_fits = real_write
    moment, interrupted = 0, True
    while interrupted:  # every line the write runs, from the first to past the last
        moment += 1
        forget_results(toy_copy)
        tracer, _ = interrupt_at_line(moment)
        sys.settrace(tracer)
        try:
            real_write(*writes[0])
            interrupted = False
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        assert len(rows(toy_copy)) in (0, 3), moment
        assert_every_row_has_its_probe(toy_copy)
    assert moment > 20 and len(rows(toy_copy)) == 3
    assert main(probe_args(toy_copy)) == 0
    assert_nothing_orphaned(toy_copy)


@pytest.mark.parametrize("point", ["mid-dump", "before-commit", "after-commit"])
def test_kill_9_while_writing_then_a_rerun_completes_and_cleans_up(toy_copy, point):
    assert main(probe_args(toy_copy, "--probe", "mass-mean")) == 0  # an earlier result, to be kept or replaced
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT, point, *probe_args(toy_copy, "--overwrite-train")],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL
    assert_every_row_has_its_probe(toy_copy)
    assert_a_rerun_recovers_everything(toy_copy)


def test_real_signals_at_random_delays(toy_copy):
    command = [sys.executable, "-m", "featstore.cli", *probe_args(toy_copy, "--overwrite-train")]
    delays = random.Random(2)
    for sig in (signal.SIGINT, signal.SIGKILL, signal.SIGINT, signal.SIGKILL):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delays.uniform(1.0, 6.0))
        process.send_signal(sig)
        _, err = process.communicate()
        assert process.returncode in (0, EXIT_INTERRUPTED, -signal.SIGKILL, -signal.SIGINT)
        if process.returncode != -signal.SIGINT:  # -SIGINT: stopped while Python imported modules, before main()
            assert "Traceback" not in err
        assert_every_row_has_its_probe(toy_copy)
    assert main(probe_args(toy_copy)) == 0
    assert len(rows(toy_copy)) == 3
    assert_nothing_orphaned(toy_copy)


def test_two_identical_runs_at_once_both_succeed_and_write_each_result_once(toy_copy, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", BOTH_AT_THE_WRITE, str(barrier), name, *probe_args(toy_copy)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    outcomes = [(run.wait(), run.stderr.read()) for run in runs]
    assert [code for code, _ in outcomes] == [0, 0]
    # the run whose rows the other committed first writes none and says so in one line
    assert all(
        err == "" or (err.startswith("featstore: nothing to do:") and err.count("\n") == 1) for _, err in outcomes
    )
    assert len(rows(toy_copy)) == 3
    assert_every_row_has_its_probe(toy_copy)
    assert_nothing_orphaned(toy_copy)


def test_a_row_whose_probe_file_is_missing_is_refitted_by_overwrite_eval(toy_copy):
    assert main(probe_args(toy_copy)) == 0
    lost = rows(toy_copy).iloc[0]
    (toy_copy.store_dir / lost["probe_path"]).unlink()
    assert_a_rerun_recovers_everything(toy_copy)


def test_staged_and_unreferenced_files_of_older_runs_are_removed(toy_copy):
    assert main(probe_args(toy_copy, "--probe", "mass-mean")) == 0
    folder = (toy_copy.store_dir / rows(toy_copy)["probe_path"][0]).parent
    for name in (
        ".abc.joblib.staged",
        "abc.joblib",
        "abc.safetensors",
        ".abc.safetensors.staged",
        "abc.logs/version_0/metrics.csv",
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    assert main(probe_args(toy_copy)) == 0
    assert_nothing_orphaned(toy_copy)
    assert not (folder / "abc.logs").exists()
