"""Advisory lock files that the OS releases when the process dies: one build at a time per store, one
writer at a time of the saved probes, and the catalog's gate that gives its writers priority over readers.
A store in a bucket is held through a lease object instead (`featstore.store.lease`); a command holds either
through `featstore.session.holding`."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from featstore.errors import FeatstoreError

BUILD_LOCK = ".write.lock"


@contextmanager
def exclusive_build(lock_path: Path) -> Iterator[None]:
    """Hold the store's build lock, or refuse at once with the holder's pid."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise FeatstoreError(
                f"another featstore build (pid {holder}) is writing {lock_path.parent}; "
                "wait for it to finish, then run this command again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def waiting_lock(lock_path: Path) -> Iterator[None]:
    """Hold an advisory lock, waiting while another process holds it (for short critical sections only)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_GATES_HELD: dict[Path, int] = {}  # catalog gates this process holds exclusively, with their nesting depth


def gate_path(catalog_path: Path) -> Path:
    """The gate file beside a catalog (`store/.catalog.duckdb.gate`)."""
    return catalog_path.with_name(f".{catalog_path.name}.gate")


def _flock_within(handle, operation: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


@contextmanager
def catalog_gate(catalog_path: Path, exclusive: bool, wait_s: float) -> Iterator[bool]:
    """Writer priority for the catalog: a writer holds the gate exclusively for as long as it writes; a reader
    holds it shared only while it connects. So a waiting writer stops new readers and waits only for readers
    already connected. Within a process that holds it, the gate is open; writers create it. Yields False when
    `wait_s` ran out."""
    path = gate_path(Path(catalog_path))
    if _GATES_HELD.get(path):
        _GATES_HELD[path] += 1
        try:
            yield True
        finally:
            _GATES_HELD[path] -= 1
        return
    if not exclusive and not path.exists():  # no writer yet: a reader leaves the store as it found it
        yield True
        return
    with open(path, "a+" if exclusive else "r") as handle:
        passed = _flock_within(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, wait_s)
        if passed and exclusive:
            _GATES_HELD[path] = 1
        try:
            yield passed
        finally:
            if passed:
                _GATES_HELD.pop(path, None)
                fcntl.flock(handle, fcntl.LOCK_UN)
