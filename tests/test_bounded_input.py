"""Untrusted input on the command line: hostile expressions, SQL, paths and sizes end in one line, a
meaningful exit code and nothing left behind (issue 8, cases 4-7 and 9-11)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from featstore.bounded import Budget
from featstore.cli import main
from featstore.datasets import expressions
from featstore.project import Project
from tests.factories import registry_row, write_registry

HOSTILE_REGEX = "col.str.contains('(a+)+$', flags=2)"
REPO = Path(__file__).resolve().parents[1]


def clean(project: Project, *extra: str) -> int:
    return main(["--root", str(project.root), "datasets", "clean", *extra])


def leftovers(project: Project) -> list[str]:
    """Files a failed command must not leave: staged, temporary or cleaned outputs."""
    patterns = ["datasets/raw/tmp*", "datasets/cleaned/*", "**/*.staged", "**/*.tmp", "**/*.retired"]
    return sorted(str(p.relative_to(project.root)) for pattern in patterns for p in project.root.glob(pattern))


def one_error_line(capsys) -> str:
    """The command's one error line (pandas' one-line warnings about regex groups may come before it)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("featstore: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("featstore: error: "), lines
    return lines[0] + "\n"


def hostile_project(project: Project) -> None:
    pd.DataFrame({"text": ["a" * 40 + "!", "b"] * 50, "label": [0, 1] * 50}).to_csv(
        project.raw_dir / "evil.csv", index=False
    )
    write_registry(
        project, [registry_row(2, "evil", "evil.csv", **{"Probe to": "text", "Probe to extraction": HOSTILE_REGEX})]
    )


def test_case4_backtracking_regex_is_one_line_within_the_time_limit(project: Project, capsys, monkeypatch) -> None:
    monkeypatch.setattr(expressions, "EVALUATION_BUDGET", Budget(seconds=1.0, memory_bytes=2**30))
    hostile_project(project)
    started = time.monotonic()
    assert clean(project) == 1
    assert time.monotonic() - started < 15
    err = one_error_line(capsys)
    assert "line 2 (2_evil), Probe to extraction" in err and err.endswith("stopped after 1 s time limit\n")
    assert leftovers(project) == [] and not project.catalog_path.exists()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def test_case4_ctrl_c_stops_a_backtracking_regex(project: Project) -> None:
    hostile_project(project)
    command = [sys.executable, "-m", "featstore.cli", "--root", str(project.root), "datasets", "clean"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not _children(process.pid) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)  # the expression runs in a child: the regex is under way
        time.sleep(0.5)
        evaluating = _children(process.pid)
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C does: the whole process group
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130 and err.endswith("featstore: interrupted\n") and "Traceback" not in err
    assert evaluating and not any(Path(f"/proc/{child}").exists() for child in evaluating)
    assert leftovers(project) == []


def sql(project: Project, *args: str) -> int:
    return main(["--root", str(project.root), "sql", *args])


@pytest.fixture
def catalogued(project: Project) -> Project:
    """The toy project, cleaned: a catalog to query."""
    assert clean(project) == 0
    return project


def test_case6_large_results_are_refused_at_the_row_cap(catalogued: Project, capsys) -> None:
    assert sql(catalogued, "SELECT * FROM range(200000)", "--format", "csv") == 1
    assert one_error_line(capsys) == (
        "featstore: error: refused: the result has more than 100,000 rows (--max-rows 100000); "
        "add a LIMIT or an aggregate, or raise --max-rows\n"
    )
    assert capsys.readouterr().out == ""
    assert sql(catalogued, "SELECT * FROM range(1000)", "--format", "csv", "--max-rows", "999") == 1
    assert "more than 999 rows (--max-rows 999)" in one_error_line(capsys)
    assert sql(catalogued, "SELECT * FROM range(1000)", "--format", "csv", "--max-rows", "1000") == 0
    assert capsys.readouterr().out.splitlines()[1:] == [str(i) for i in range(1000)]


def test_case6_memory_outside_duckdbs_limit_is_bounded(catalogued: Project, capsys, monkeypatch) -> None:
    monkeypatch.setattr("featstore.catalog.safe_sql.USER_QUERY_BUDGET", Budget(seconds=30, memory_bytes=2**29))
    started = time.monotonic()
    assert sql(catalogued, "SELECT list_sort(range(50000000))[1] AS first") == 1
    assert one_error_line(capsys).startswith("featstore: error: query stopped: out of memory (")
    assert time.monotonic() - started < 20


def test_case6_time_limit_holds_inside_a_long_list_function(catalogued: Project, capsys, monkeypatch) -> None:
    monkeypatch.setattr("featstore.catalog.safe_sql.USER_QUERY_BUDGET", Budget(seconds=1, memory_bytes=8 * 2**30))
    started = time.monotonic()
    assert sql(catalogued, "SELECT list_sort(range(200000000))[1] AS first") == 1
    assert one_error_line(capsys) == "featstore: error: query stopped after 1 s time limit\n"
    assert time.monotonic() - started < 10


READER_LOOP = """
import sys, time
from featstore.catalog.safe_sql import CatalogReader
catalog, offset, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
time.sleep(offset)
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    with CatalogReader(catalog) as reader:  # a long read: the connection held for a second
        reader.query("SELECT count(*) FROM examples")
        time.sleep(1.0)
"""


def test_case7_overlapping_readers_do_not_starve_a_writer(catalogued: Project) -> None:
    from featstore.catalog.database import catalog_writer

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER_LOOP, str(catalogued.catalog_path), str(offset), "20"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for offset in (0.0, 0.5)
    ]
    try:
        assert [reader.stdout.readline().strip() for reader in readers] == ["ready", "ready"]
        time.sleep(1.0)  # from now on some reader always holds the catalog
        started = time.monotonic()
        with catalog_writer(catalogued, wait_s=5) as con:
            con.execute("UPDATE datasets SET n_examples = n_examples")
        waited = time.monotonic() - started
    finally:
        for reader in readers:
            reader.kill()
            reader.wait()
    assert waited < 2.5  # one reader's hold, not the readers' whole run


def test_case9_huge_dataset_number_is_refused_before_anything_is_written(project: Project, capsys) -> None:
    write_registry(project, [registry_row(3000000000, "huge", "toy.csv")])
    assert clean(project) == 1
    assert one_error_line(capsys) == (
        "featstore: error: datasets/main.csv line 2: number 3000000000 is too large (at most 2147483647)\n"
    )
    assert leftovers(project) == [] and not project.catalog_path.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["datasets", "clean", "--overwrite"],
        ["datasets", "list"],
        ["build", "--model", "random:tiny", "--device", "cpu"],
    ],
)
def test_case9_truncated_catalog_is_one_line(catalogued: Project, capsys, command: list[str]) -> None:
    size = catalogued.catalog_path.stat().st_size
    with open(catalogued.catalog_path, "r+b") as handle:
        handle.truncate(size // 2 // 4096 * 4096)  # opens, but its tables' blocks are cut off
    assert main(["--root", str(catalogued.root), *command]) == 1
    assert "Could not read enough bytes from file" in one_error_line(capsys)
    assert leftovers(catalogued) == ["datasets/cleaned/1_toy.csv"]


def test_case10_links_out_of_datasets_raw_are_not_followed(project: Project, capsys, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("text,label\nhunter2,1\nswordfish,0\n")
    (project.raw_dir / "file_link.csv").symlink_to(outside / "secret.csv")
    (project.raw_dir / "folder_link").symlink_to(outside)
    (project.raw_dir / "inside_link.csv").symlink_to(project.raw_dir / "toy.csv")
    for source in ("file_link.csv", "folder_link/secret.csv"):
        write_registry(project, [registry_row(2, "leak", source)])
        assert clean(project) == 1
        assert one_error_line(capsys) == (
            f"featstore: error: datasets/main.csv line 2 (2_leak), source: datasets/raw/{source} leads through a link "
            f"to {outside.resolve() / 'secret.csv'}, outside datasets/raw/; copy the file in instead\n"
        )
        assert leftovers(project) == [] and not project.catalog_path.exists()
    write_registry(project, [registry_row(2, "inside", "inside_link.csv")])
    assert clean(project) == 0


def test_case11_a_folder_as_source_is_called_a_folder(project: Project, capsys) -> None:
    (project.raw_dir / "sub").mkdir()
    write_registry(project, [registry_row(2, "folder", "sub")])
    assert clean(project) == 1
    assert one_error_line(capsys) == (
        "featstore: error: datasets/main.csv line 2 (2_folder), source: datasets/raw/sub is a "
        "folder; name a file (CSV, compressed CSV or Parquet) inside it\n"
    )


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 16 MiB tmpfs to fill up (mounting needs root); skipped where it cannot be mounted."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def fill_leaving(disk: Path, free_bytes: int) -> Path:
    """A filler file that leaves `free_bytes` free on the disk; delete it to free the space again."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - free_bytes))
    return filler


def fake_sae_wheel(path: Path) -> Path:
    import zipfile

    from tests.test_sae_probes_import import fake_data_files

    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in fake_data_files(2000).items():
            archive.writestr(f"sae_probes/data/{name}", payload)
    return path


def disk_project(disk: Path, n: int = 2000) -> Project:
    from featstore.project import init_project
    from tests.factories import toy_raw

    project = init_project(disk / "p")
    project.raw_dir.mkdir(parents=True, exist_ok=True)
    toy_raw(n).to_csv(project.raw_dir / "toy.csv", index=False)
    write_registry(project, [registry_row(1, "toy", "toy.csv")])
    return project


# free space at which each command failed in a different place (a raw file, a staged CSV, the catalog's WAL,
# zarr chunks, the registry) when these tests were written; every one must end the same way
FULL_DISK_CASES = [
    ("clean", 0),
    ("clean", 50_000),
    ("clean", 200_000),
    ("import", 0),
    ("import", 50_000),
    ("import", 200_000),
    ("build", 0),
    ("build", 100_000),
    ("build", 400_000),  # 16 examples a split
]


@pytest.mark.parametrize(("command", "free_bytes"), FULL_DISK_CASES)
def test_case9_full_disk_is_one_line_leaves_nothing_and_a_rerun_succeeds(
    small_disk: Path, tmp_path: Path, capsys, command: str, free_bytes: int
) -> None:
    project = disk_project(small_disk, 300 if command == "build" else 2000)
    argv = {
        "clean": ["datasets", "clean"],
        "import": [
            "datasets",
            "import-sae-probes",
            "--source",
            str(fake_sae_wheel(tmp_path / "sae_probes-0-py3-none-any.whl")),
        ],
        "build": ["build", "--model", "random:tiny", "--device", "cpu", "--limit", "16"],
    }[command]
    if command == "build":
        assert clean(project) == 0
    registry = project.registry_path.read_bytes()
    filler = fill_leaving(small_disk, free_bytes)
    assert main(["--root", str(project.root), *argv]) == 1
    err = one_error_line(capsys)
    assert "no space left on device" in err.lower()
    assert [p for p in leftovers(project) if not p.startswith("datasets/cleaned/1_toy.csv")] == []
    assert project.registry_path.read_bytes() == registry
    filler.unlink()
    assert main(["--root", str(project.root), *argv]) == 0


def test_case9_catalog_commit_failing_for_space_keeps_the_old_files_and_rows(
    small_disk: Path, capsys, monkeypatch
) -> None:
    import duckdb

    from featstore.datasets import cleaning

    project = disk_project(small_disk)
    assert clean(project) == 0
    cleaned_before = project.cleaned_path("1_toy").read_bytes()
    write_registry(project, [registry_row(1, "toy", "toy.csv", **{"Probe to extraction": "col == 0"})])
    index = cleaning._index
    monkeypatch.setattr(cleaning, "_index", lambda *args: (fill_leaving(small_disk, 0), index(*args)))
    assert clean(project) == 1
    err = one_error_line(capsys)
    assert (
        err.startswith(f"featstore: error: cannot read or write {project.catalog_path}: ")
        and "No space left on device" in err
    )
    assert project.cleaned_path("1_toy").read_bytes() == cleaned_before
    assert leftovers(project) == ["datasets/cleaned/1_toy.csv"]
    (small_disk / "filler").unlink()
    con = duckdb.connect(str(project.catalog_path), read_only=True)
    assert (
        con.execute("SELECT sum(label) FROM examples").fetchone()[0]
        == pd.read_csv(project.raw_dir / "toy.csv")["label"].sum()
    )
    con.close()
    monkeypatch.setattr(cleaning, "_index", index)
    assert clean(project) == 0
    assert (
        pd.read_csv(project.cleaned_path("1_toy"))["target"].sum()
        == (pd.read_csv(project.raw_dir / "toy.csv")["label"] == 0).sum()
    )


def test_case6_results_over_the_byte_cap_are_refused(catalogued: Project, capsys, monkeypatch) -> None:
    monkeypatch.setattr("featstore.catalog.safe_sql.MAX_RESULT_BYTES", 2**20)
    assert sql(catalogued, "SELECT repeat('x', 10000) AS text FROM range(200)") == 1
    assert one_error_line(capsys).startswith(
        "featstore: error: refused: the result holds 2 MiB, more than the 1 MiB allowed"
    )
    with pytest.raises(SystemExit) as exit_:
        sql(catalogued, "SELECT * FROM range(3)", "--max-rows", "0")
    assert exit_.value.code == 2 and "expected a whole number of at least 1, got '0'" in capsys.readouterr().err
