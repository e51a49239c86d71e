"""The child-process budget for untrusted work: results and errors come back, time, memory and Ctrl-C stop it."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from featstore.bounded import Budget, BudgetExceeded, run_bounded
from featstore.errors import FeatstoreError

ROOMY = Budget(seconds=30, memory_bytes=2**30)


def _spin_writing_pid(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        pass


def _allocate(n_bytes: int) -> int:
    return len(bytearray(n_bytes))


def _fail(message: str) -> None:
    raise FeatstoreError(message)


def _assert_gone(pid_file: Path) -> None:
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_result_and_errors_come_back() -> None:
    assert run_bounded(sorted, [3, 1, 2], budget=ROOMY, what="sorting") == [1, 2, 3]
    with pytest.raises(FeatstoreError, match="^told to fail$"):
        run_bounded(_fail, "told to fail", budget=ROOMY, what="failing")


def test_time_limit_kills_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(BudgetExceeded, match="^spinning stopped after 0.5 s time limit$"):
        run_bounded(_spin_writing_pid, str(pid_file), budget=Budget(0.5, 2**30), what="spinning")
    assert time.monotonic() - started < 5
    _assert_gone(pid_file)


def test_memory_limit_stops_the_child() -> None:
    with pytest.raises(BudgetExceeded, match=r"^allocating stopped: it needed more than its 0.25 GiB memory limit$"):
        run_bounded(_allocate, 2**30, budget=Budget(30, 2**28), what="allocating")
    assert run_bounded(_allocate, 2**26, budget=Budget(30, 2**28), what="allocating") == 2**26


def test_ctrl_c_in_the_parent_kills_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        run_bounded(_spin_writing_pid, str(pid_file), budget=Budget(30, 2**30), what="spinning")
    timer.join()
    _assert_gone(pid_file)


def test_an_orphaned_child_is_stopped_by_its_cpu_limit(tmp_path: Path, monkeypatch) -> None:
    # the parent cannot kill a child once it is itself killed: the kernel's CPU limit ends a spinning child
    monkeypatch.setattr("featstore.bounded.CPU_TIME_FACTOR", 0)
    with pytest.raises(BudgetExceeded, match=r"^spinning stopped after 30 s time limit \(CPU time\)$"):
        run_bounded(_spin_writing_pid, str(tmp_path / "pid"), budget=Budget(30, 2**30), what="spinning")
