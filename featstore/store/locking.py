"""Advisory lock files that the OS releases when the process dies: one build at a time per store, and one
writer at a time of the saved probes."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from featstore.errors import FeatstoreError


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
