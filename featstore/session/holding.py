"""Hold a project's store for the length of a command that writes it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from featstore.project import Project
from featstore.session import mirror
from featstore.store.lease import holding_lease
from featstore.store.locking import BUILD_LOCK, exclusive_build


@contextmanager
def holding_store(project: Project, command: str, local_lock: bool = True) -> Iterator[None]:
    """Hold the project's store for a command that writes it: a local store's build lock (`local_lock`), or a
    remote store's lease, with the catalog and datasets brought up to date from the store first and mirrored
    to it afterwards (see `featstore.session.mirror`)."""
    if not project.store_is_remote:
        if local_lock:
            with exclusive_build(project.store.root / BUILD_LOCK):
                yield
        else:
            yield
        return
    with holding_lease(project.store, command):
        mirror.pull(project)
        yield
        mirror.push(project)
