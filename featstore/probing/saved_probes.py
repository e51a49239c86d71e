"""Saved probes in the store: where a fit's file goes, and reading one back bounded and checked, never unpickled
(see probes.saved). Files of format 1 (joblib pickles, `.joblib`) are never read: their rows are refitted."""

from __future__ import annotations

from featstore.errors import FeatstoreError
from featstore.project import Project
from featstore.store.layout import PROBES
from featstore.store.safe_paths import checked_key
from probes import SavedProbeError, load_probe
from probes.base import BinaryProbe

SUFFIX = ".safetensors"
PICKLED_SUFFIX = ".joblib"
LOGS_SUFFIX = ".logs"


def is_pickled(key: str) -> bool:
    """Whether a saved probe is a pickle of an older featstore (never loaded)."""
    return key.endswith(PICKLED_SUFFIX)


def is_probe_key(key: str) -> bool:
    """Whether a key (read from the catalog: untrusted) names a probe file featstore writes, the only kind of
    file that probe runs delete: `probes/<model>/<dataset>/<name>` in either format."""
    try:
        parts = checked_key(key, "probe file").split("/")
    except FeatstoreError:
        return False
    return len(parts) == 4 and parts[0] == PROBES and key.endswith((SUFFIX, PICKLED_SUFFIX))


def logs_key(probe_key: str) -> str:
    """The learning-curve folder beside a saved probe (of either format)."""
    for suffix in (SUFFIX, PICKLED_SUFFIX):
        if probe_key.endswith(suffix):
            return probe_key.removesuffix(suffix) + LOGS_SUFFIX
    return probe_key + LOGS_SUFFIX


def read_probe(project: Project, key: str) -> BinaryProbe:
    """The probe saved at `key` in the project's store; a missing, pickled or malformed file is one line."""
    where = project.store.describe(key)
    if is_pickled(key):
        raise FeatstoreError(
            f"the saved probe {where} is a pickle written by an older featstore and is never "
            "loaded; refit it with `featstore probe ... --overwrite-train`"
        )
    try:
        with project.store.open(key) as handle:
            return load_probe(handle)
    except FileNotFoundError:
        raise FeatstoreError(f"the saved probe {where} is missing; rerun with --overwrite-train") from None
    except SavedProbeError as error:
        raise FeatstoreError(
            f"the saved probe {where} cannot be loaded: {error}; refit it with --overwrite-train"
        ) from None
