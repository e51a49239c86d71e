"""Run untrusted work (user SQL, extraction expressions) in a forked child under a time and memory budget.

A regex that backtracks for hours or a DuckDB list function that allocates outside DuckDB's own memory
limit cannot be interrupted from inside: the child gets a data-size limit (RLIMIT_DATA: heap and private
writable mappings; an address-space limit would also count glibc's per-thread arena reservations) on top of
what it inherited, and the parent kills it when the time is up or on Ctrl-C. The child is forked, so it
starts in milliseconds with everything imported; callers fork before opening DuckDB connections.
"""

from __future__ import annotations

import math
import multiprocessing
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from featstore.errors import FeatstoreError

T = TypeVar("T")
CPU_TIME_FACTOR = 4  # CPU seconds allowed per wall-clock second (DuckDB runs user queries on 2 threads)


@dataclass(frozen=True)
class Budget:
    """Wall-clock seconds and bytes of memory beyond what the child inherits at the fork."""

    seconds: float
    memory_bytes: int

    def describe_memory(self) -> str:
        return f"{self.memory_bytes / 2**30:.3g} GiB"


class BudgetExceeded(FeatstoreError):
    """The work ran past its time or memory budget and was stopped."""


def _data_size() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _limit(kind: int, value: int) -> None:
    """Lower a resource limit to `value`, never above the hard limit this process inherited."""
    _, hard = resource.getrlimit(kind)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, hard if kind == resource.RLIMIT_CPU else value))


def _child(send, budget: Budget, function: Callable, args: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it kills this process
    try:
        _limit(resource.RLIMIT_DATA, _data_size() + budget.memory_bytes)
        # a backstop should the parent be killed before it can kill this child: the kernel stops it (SIGXCPU)
        # after CPU time that a few threads could not spend within the wall-clock budget
        _limit(resource.RLIMIT_CPU, math.ceil(CPU_TIME_FACTOR * budget.seconds) + 1)
        outcome = ("ok", function(*args))
    except MemoryError:
        outcome = ("memory", None)
    except Exception as error:  # sent back and raised in the parent as it is
        outcome = ("error", error)
    try:
        send.send(outcome)
    except MemoryError:
        send.send(("memory", None))
    except Exception as error:  # e.g. an unpicklable exception: its text still reaches the parent
        send.send(("error", FeatstoreError(f"{type(error).__name__}: {error}")))
    send.close()


def run_bounded(function: Callable[..., T], *args: Any, budget: Budget, what: str) -> T:
    """function(*args) in a forked child within `budget`; BudgetExceeded names `what` when it runs past it.

    Exceptions raised by the function are raised here; its arguments and result must be picklable.
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(send, budget, function, args), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(budget.seconds):
            raise BudgetExceeded(f"{what} stopped after {budget.seconds:g} s time limit")
        try:
            status, value = receive.recv()
        except EOFError:  # the child died without a word: killed by the kernel or crashed for lack of memory
            status, value = "memory", None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if child.exitcode == -signal.SIGXCPU:
        raise BudgetExceeded(f"{what} stopped after {budget.seconds:g} s time limit (CPU time)")
    if status == "memory":
        raise BudgetExceeded(f"{what} stopped: it needed more than its {budget.describe_memory()} memory limit")
    if status == "error":
        raise value
    return value
