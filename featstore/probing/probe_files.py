"""The store side of probe runs: where a new fit's file goes, putting a fit's probe and learning curves in
place whole, and deleting the files no catalog row refers to (only keys featstore writes for probes)."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from featstore.errors import FeatstoreError
from featstore.probing.saved_probes import SUFFIX, is_probe_key, logs_key
from featstore.probing.specs import ProbeSpec
from featstore.project import Project
from featstore.store.layout import PROBES, model_dir_name
from probes import probe_bytes


def new_probe_path(spec: ProbeSpec) -> str:
    """Where a new fit of a spec is saved, relative to the store: a name of its own, so a refit never
    overwrites the file that the committed row still refers to."""
    return f"{PROBES}/{model_dir_name(spec.model)}/{spec.dataset}/{spec.result_id}-{uuid.uuid4().hex[:12]}{SUFFIX}"


def place(project: Project, key: str, probe: object, logs: Path | None) -> None:
    """Put a fit's learning curves, then its probe file, into the store at `key` (each file whole: a staged rename
    in a folder, one PUT in a bucket), so a probe file in place means its curves are too."""
    try:
        if logs is not None and logs.is_dir():
            project.store.put_folder(logs, logs_key(key))
        with tempfile.TemporaryDirectory(prefix="featstore-probe-") as scratch:
            saved = Path(scratch) / f"probe{SUFFIX}"
            saved.write_bytes(probe_bytes(probe))
            project.store.put_file(saved, key)
    except BaseException:
        remove_fit(project, key)
        raise


def saved_probe_keys(project: Project) -> set[str]:
    """The keys of every file under the store's probe folder (one listing)."""
    return set(project.store.list(PROBES))


def remove_orphans(project: Project, referenced: set[str]) -> set[str]:
    """Delete, under the probe lock, the staged files and the probe files (with learning curves) that no row
    refers to (`referenced`: every probe_path in the catalog): what a run killed before or after its catalog
    commit, or a dropped result, left behind. Returns the probe files kept."""
    owners = {logs_key(key): key for key in referenced}
    saved = set()
    for key in project.store.list(PROBES):  # probes/<model>/<dataset>/<entry>[/<learning-curve file>]
        entry = "/".join(key.split("/")[:4])
        if owners.get(entry, entry) in referenced and ".staged" not in key:
            saved.add(key)
        else:
            project.store.delete([key])
    return saved


def remove_fit(project: Project, probe_key: str) -> None:
    """Delete a fit's probe file (a file) and its learning curves (a folder), whichever are there; a key that
    names no probe file (a hostile catalog's) is refused before anything is deleted."""
    if not is_probe_key(probe_key):
        raise FeatstoreError(f"the catalog names {probe_key!r} as a probe file, which no probe file is: not deleted")
    project.store.delete([probe_key])
    project.store.delete_folder(logs_key(probe_key))
