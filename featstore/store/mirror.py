"""A project's catalog and datasets mirrored into its remote store, so another machine can clone it.

After a command that changed them (and a build after each split, before older versions of it are deleted),
`push` uploads a consistent snapshot of the catalog (checkpointed while no writer holds it), the registry,
raw and cleaned files and the saved tokenizers that changed, then `project.json` last: a generation number
and the checksum of every mirrored file. `pull` (before a writing command, and by `featstore clone`)
downloads what a newer generation changed; a file changed both here and in the store since the last sync is
refused, never overwritten. Credentials are never mirrored. Pushes and pulls run under the store's lease.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from featstore.catalog.database import WRITER_WAIT_S, catalog_writer
from featstore.errors import FeatstoreError
from featstore.project import Project, init_project
from featstore.store.integrity import streamed_checksum
from featstore.store.lease import assert_held
from featstore.store.location import store_location
from featstore.store.locking import catalog_gate

STATE = "project.json"
CATALOG = "catalog.duckdb"
LOCAL_STATE = ".mirror.json"
_PUSHING = threading.Lock()


def push(project: Project) -> None:
    """Upload the catalog snapshot and the changed project files, then the new `project.json` (one thread at a
    time: splits built at once push in turn)."""
    with _PUSHING:
        _push(project)


def _push(project: Project) -> None:
    assert_held(project.store)
    remote = _remote_state(project)
    files = _local_files(project)
    for relative, entry in files.items():
        if remote["files"].get(relative) != entry:
            project.store.put_file(_local_path(project, relative), relative)
    project.store.delete(relative for relative in remote["files"] if relative not in files)
    if project.catalog_path.exists():
        with tempfile.TemporaryDirectory(dir=project.store_dir) as scratch:
            snapshot = Path(scratch) / CATALOG
            with catalog_writer(project) as con:
                con.execute("CHECKPOINT")
                shutil.copyfile(project.catalog_path, snapshot)
            project.store.put_file(snapshot, CATALOG)
    state = {"generation": remote["generation"] + 1, "files": files}
    project.store.write_bytes(STATE, json.dumps(state, sort_keys=True).encode())
    _write_local_state(project, state)


def pull(project: Project) -> bool:
    """Download the catalog and the project files a newer generation in the store changed; False when the
    local copy is current (or the store holds no project yet)."""
    remote = _remote_state(project)
    local = _local_state(project)
    if remote["generation"] <= local["generation"]:
        return False
    here, synced = _local_files(project), local.get("files", {})
    changed_here = {relative for relative, entry in here.items() if synced.get(relative) != entry}
    conflicts = sorted(r for r in changed_here if remote["files"].get(r) not in (None, here[r]))
    if conflicts:
        raise FeatstoreError(f"{', '.join(conflicts)} changed here and in {project.store.url} since this project "
                             "last synced; keep a copy of yours, delete it, and run the command again")
    for relative, entry in remote["files"].items():
        if relative not in changed_here and here.get(relative) != entry:
            project.store.get_file(relative, _local_path(project, relative))
    for relative in here.keys() - remote["files"].keys() - changed_here:
        _local_path(project, relative).unlink(missing_ok=True)
    if project.store.exists(CATALOG):
        project.store_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=project.store_dir) as scratch:
            downloaded = Path(scratch) / CATALOG
            project.store.get_file(CATALOG, downloaded)
            with catalog_gate(project.catalog_path, exclusive=True, wait_s=WRITER_WAIT_S) as passed:
                if not passed:
                    raise FeatstoreError(f"{project.catalog_path} is open in another featstore process; try again "
                                         "when it finishes")
                Path(f"{project.catalog_path}.wal").unlink(missing_ok=True)
                os.replace(downloaded, project.catalog_path)
    _write_local_state(project, remote)  # files changed here stay "changed": the next push uploads them
    return True


def clone(url: str, directory: Path) -> Project:
    """A working project in `directory` from a store URL: registry, datasets, tokenizers and catalog
    downloaded, features read in place."""
    location = store_location(url)
    if location.read_bytes(STATE) is None:
        raise FeatstoreError(f"{url} holds no featstore project (no {STATE}); `featstore init DIR --store {url}` "
                             "starts one")
    if (directory / "datasets" / "main.csv").exists():
        raise FeatstoreError(f"{directory} already holds a featstore project; clone into a new directory")
    project = init_project(directory, store=url)
    project.registry_path.unlink()
    pull(project)
    return project


def _remote_state(project: Project) -> dict:
    raw = project.store.read_bytes(STATE)
    try:
        return json.loads(raw) if raw else {"generation": 0, "files": {}}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FeatstoreError(f"{project.store.describe(STATE)} is damaged; push again from a machine with the "
                             "project") from None


def _local_state(project: Project) -> dict:
    path = project.store_dir / LOCAL_STATE
    return json.loads(path.read_text()) if path.exists() else {"generation": 0, "files": {}}


def _write_local_state(project: Project, state: dict) -> None:
    """What this copy last synced: the generation and the mirrored files as they were then."""
    project.store_dir.mkdir(parents=True, exist_ok=True)
    (project.store_dir / LOCAL_STATE).write_text(json.dumps({"generation": state["generation"],
                                                             "files": state["files"]}))


def _local_path(project: Project, relative: str) -> Path:
    if relative.startswith("tokenizers/"):
        return project.tokenizers_dir / relative[len("tokenizers/"):]
    return project.root / relative


def _local_files(project: Project) -> dict[str, list[int]]:
    """Every mirrored local file, as [size, crc32c] by its key in the store."""
    files = {}
    for folder, prefix in ((project.datasets_dir, "datasets"), (project.tokenizers_dir, "tokenizers")):
        if folder.is_dir():
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
                with open(path, "rb") as handle:
                    crc, size = streamed_checksum(handle)
                files[f"{prefix}/{path.relative_to(folder).as_posix()}"] = [size, crc]
    return files
