"""A project's catalog and datasets mirrored into its remote store, so another machine can clone it.

After a command that changed them (and a build after each split, before older versions of it are deleted),
`push` uploads a consistent snapshot of the catalog (checkpointed while no writer holds it), the registry,
raw and cleaned files and the saved tokenizers that changed, then `project.json` last: a generation number
and the checksum of every mirrored file. `pull` (before a writing command, and by `featstore clone`)
downloads what a newer generation changed; a file changed both here and in the store since the last sync is
refused, never overwritten. Credentials are never mirrored. Pushes and pulls run under the store's lease;
read-only commands `refresh` (a pull without it), so they see a rebuild done elsewhere.

Whatever the store holds is untrusted: `project.json` is size-capped and checked (only plain relative keys below
`datasets/` and `tokenizers/`, proven to stay in their local folders), and every download, the catalog included,
must match the size and crc32c it lists before any local file is replaced or deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from featstore.catalog.database import replace_catalog, snapshot_catalog
from featstore.errors import FeatstoreError
from featstore.project import Project, init_project
from featstore.store.documents import read_document
from featstore.store.integrity import streamed_checksum
from featstore.store.lease import assert_held
from featstore.store.location import store_location
from featstore.store.safe_paths import checked_count, checked_key, confined_path

STATE = "project.json"
CATALOG = "catalog.duckdb"
LOCAL_STATE = ".mirror.json"
MIRRORED = ("datasets/", "tokenizers/")
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
    state = {"generation": remote["generation"] + 1, "files": files}
    if project.catalog_path.exists():
        with tempfile.TemporaryDirectory(dir=project.store_dir) as scratch:
            snapshot = Path(scratch) / CATALOG
            snapshot_catalog(project, snapshot)
            project.store.put_file(snapshot, CATALOG)
            state[CATALOG] = _checksum_of(snapshot)
    project.store.write_bytes(STATE, json.dumps(state, sort_keys=True).encode())
    _write_local_state(project, state)


def pull(project: Project, read_only: bool = False) -> bool:
    """Download the catalog and the project files a newer generation in the store changed; False when the
    local copy is current (or the store holds no project yet). Every name `project.json` lists is checked, and
    every file downloaded and checked against its size and crc32c, before any local file is replaced or deleted.
    `read_only`: a read-only command's pull, without the write lease (a mismatch is then a push under way)."""
    remote = _remote_state(project)
    local = _local_state(project)
    if remote["generation"] <= local["generation"]:
        return False
    here, synced = _local_files(project), local.get("files", {})
    changed_here = {relative for relative, entry in here.items() if synced.get(relative) != entry}
    conflicts = sorted(r for r in changed_here if remote["files"].get(r) not in (None, here[r]))
    if conflicts:
        raise FeatstoreError(
            f"{', '.join(conflicts)} changed here and in {project.store.url} since this project "
            "last synced; keep a copy of yours, delete it, and run the command again"
        )
    wanted = {
        relative: entry
        for relative, entry in remote["files"].items()
        if relative not in changed_here and here.get(relative) != entry
    }
    targets = {relative: _local_path(project, relative) for relative in wanted}
    stale = [_local_path(project, relative) for relative in here.keys() - remote["files"].keys() - changed_here]
    project.store_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=project.store_dir) as scratch:
        staged = {relative: Path(scratch) / str(number) for number, relative in enumerate(sorted(wanted))}
        for relative, path in staged.items():
            _download(project, relative, path, wanted[relative], read_only)
        catalog = Path(scratch) / CATALOG if project.store.exists(CATALOG) else None
        if catalog is not None:
            _download(project, CATALOG, catalog, remote.get(CATALOG), read_only)
        for relative, path in staged.items():  # every download matched its listing: now they replace local files
            targets[relative].parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, targets[relative])
        for path in stale:
            path.unlink(missing_ok=True)
        if catalog is not None:
            replace_catalog(project, catalog)
    _write_local_state(project, remote)  # files changed here stay "changed": the next push uploads them
    return True


def refresh(project: Project) -> None:
    """Bring a clone's catalog and datasets up to a newer generation in the store before a read-only command (a
    rebuild elsewhere moves splits to versions only the newer catalog names), without taking the write lease."""
    if project.store_is_remote:
        pull(project, read_only=True)


def clone(url: str, directory: Path) -> Project:
    """A working project in `directory` from a store URL: registry, datasets, tokenizers and catalog
    downloaded, features read in place. A refused clone removes the directory it created."""
    location = store_location(url)
    if read_document(location, STATE) is None:
        raise FeatstoreError(
            f"{url} holds no featstore project (no {STATE}); `featstore init DIR --store {url}` starts one"
        )
    if (directory / "datasets" / "main.csv").exists():
        raise FeatstoreError(f"{directory} already holds a featstore project; clone into a new directory")
    created = not directory.exists()
    try:
        project = init_project(directory, store=url)
        project.registry_path.unlink()
        pull(project)
    except BaseException:
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return project


def _download(project: Project, key: str, path: Path, entry: list[int] | None, read_only: bool) -> None:
    """Download `key` to the scratch file `path` and check it against its [size, crc32c] in the listing (None: a
    catalog pushed before catalogs were listed)."""
    project.store.get_file(key, path)
    if entry is not None and _checksum_of(path) != entry:
        if read_only:
            raise FeatstoreError(
                f"{project.store.describe(key)} does not match {STATE} (another machine is pushing "
                "to the store); run the command again in a moment"
            )
        raise FeatstoreError(
            f"{project.store.describe(key)} does not match its size and crc32c in {STATE}; nothing "
            "was replaced here: push again from a machine with the project"
        )


def _checksum_of(path: Path) -> list[int]:
    """A file's [size, crc32c], as `project.json` lists it."""
    with open(path, "rb") as handle:
        crc, size = streamed_checksum(handle)
    return [size, crc]


def _remote_state(project: Project) -> dict:
    """The store's `project.json`, size-capped and checked (see `checked_state`)."""
    raw = read_document(project.store, STATE)
    return {"generation": 0, "files": {}} if raw is None else checked_state(raw, project.store.describe(STATE))


def checked_state(raw: bytes, where: str) -> dict:
    """A `project.json` document parsed and checked: a generation, and the [size, crc32c] of files whose keys are
    plain relative paths below `datasets/` or `tokenizers/`; else one line saying what is wrong."""

    def damaged(problem: str) -> FeatstoreError:
        return FeatstoreError(
            f"{where} is damaged ({problem}); nothing was changed here: push again from a machine with the project"
        )

    try:
        state = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise damaged("not JSON") from None
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict):
        raise damaged("no 'files' object")
    if not _is_count(state.get("generation")):
        raise damaged("'generation' is not a whole number")
    checked_count(state["files"], where)
    for key, entry in state["files"].items():
        checked_key(key, f"a file {where} lists")
        if not key.startswith(MIRRORED):
            raise damaged(f"{ascii(key)[:80]} is not below {' or '.join(MIRRORED)}")
        if not _is_entry(entry):
            raise damaged(f"the entry of {ascii(key)[:80]} is not [size, crc32c]")
    if CATALOG in state and not _is_entry(state[CATALOG]):
        raise damaged(f"the entry of {CATALOG} is not [size, crc32c]")
    return state


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _is_entry(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(map(_is_count, value)) and value[1] < 2**32


def _local_state(project: Project) -> dict:
    path = project.store_dir / LOCAL_STATE
    return checked_state(path.read_bytes(), str(path)) if path.exists() else {"generation": 0, "files": {}}


def _write_local_state(project: Project, state: dict) -> None:
    """What this copy last synced: the generation, the mirrored files and the catalog as they were then."""
    project.store_dir.mkdir(parents=True, exist_ok=True)
    (project.store_dir / LOCAL_STATE).write_text(json.dumps(state))


def _local_path(project: Project, relative: str) -> Path:
    """The local file of a mirrored key, proven to stay inside the project's datasets or tokenizers folder."""
    if relative.startswith("tokenizers/"):
        return confined_path(project.tokenizers_dir, relative[len("tokenizers/") :], "a mirrored tokenizer file")
    return confined_path(project.datasets_dir, relative[len("datasets/") :], "a mirrored dataset file")


def _local_files(project: Project) -> dict[str, list[int]]:
    """Every mirrored local file, as [size, crc32c] by its key in the store."""
    files = {}
    for folder, prefix in ((project.datasets_dir, "datasets"), (project.tokenizers_dir, "tokenizers")):
        if folder.is_dir():
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
                files[f"{prefix}/{path.relative_to(folder).as_posix()}"] = _checksum_of(path)
    return files
