"""Recording probe runs: which combinations are already done, and writing a run's fits under the probe lock.

The probe files are put in place first, then the catalog rows (results, test scores, head weights) are committed in
one transaction, so a run that fails writes nothing and a row is visible only when its probe file is there.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from featstore.catalog.database import catalog_reader, catalog_writer
from featstore.catalog.probe_records import all_results, replace_probe_results
from featstore.probing.fit import Fitted
from featstore.probing.head_weights import head_weights
from featstore.probing.probe_files import place, remove_fit, remove_orphans, saved_probe_keys
from featstore.probing.rows import HEAD_WEIGHT_COLUMNS, keyed
from featstore.probing.saved_probes import is_pickled
from featstore.probing.specs import ProbeSpec
from featstore.project import Project
from featstore.store.locking import waiting_lock


def done_results(project: Project, specs: list[ProbeSpec]) -> dict[str, dict]:
    """The recorded rows, by result id, whose saved probe is in place and readable: a row whose file is missing
    (left by an older version killed mid-write) counts as not done, and so do those of this run's specs that an
    older featstore saved as pickles (never loaded), with a warning that they are refitted."""
    rows = recorded(project)
    saved = saved_probe_keys(project)
    done = {rid: row for rid, row in rows.items() if row["probe_path"] in saved}
    pickled = {s.result_id for s in specs if s.result_id in done and is_pickled(done[s.result_id]["probe_path"])}
    if pickled:
        warnings.warn(
            f"{len(pickled)} saved probe(s) of this run are pickles written by an older featstore, never "
            "loaded: refitting them",
            stacklevel=3,
        )
    return {rid: row for rid, row in done.items() if rid not in pickled}


def recorded(project: Project) -> dict[str, dict]:
    """Every row of `probe_results`, by result id."""
    with catalog_reader(project) as con:
        frame = all_results(con)
    return {row["result_id"]: row for row in frame.to_dict("records")}


def write_fits(project: Project, fitted: list[Fitted], overwrite_train: bool) -> list[Fitted]:
    """Under the probe lock: remove what killed runs left, put each new probe file (and learning curves) in
    place, then commit the rows in one transaction, then delete the files of the rows it replaced. A row is
    visible only once its file is in place. Results another run committed meanwhile are kept, not
    duplicated. Returns what was written."""
    with waiting_lock(project.probe_lock_path):
        rows = recorded(project)
        saved = remove_orphans(project, {row["probe_path"] for row in rows.values()})
        wanted = [item for item in fitted if _still_wanted(item, rows, saved, overwrite_train)]
        if not wanted:
            return []
        placed: list[str] = []
        committing = False
        try:
            for item in wanted:
                if item.probe is not None:
                    place(project, item.row["probe_path"], item.probe, item.logs)
                    placed.append(item.row["probe_path"])
            refitted = [item for item in wanted if item.head_weights is not None]
            with catalog_writer(project) as con:
                committing = True  # from here the commit may have happened: the next run decides
                replace_probe_results(
                    con,
                    pd.DataFrame([item.row for item in wanted]),
                    pd.concat([item.scores for item in wanted]),
                    pd.concat(
                        [item.head_weights for item in refitted]
                        or [keyed(head_weights(np.zeros(0), []), "", HEAD_WEIGHT_COLUMNS)]
                    ),
                    [item.row["result_id"] for item in refitted],
                )
        except BaseException:
            if not committing:  # nothing refers to the files yet
                for key in placed:
                    remove_fit(project, key)
            raise
        for item in refitted:
            replaced = rows.get(item.row["result_id"])
            if replaced and replaced["probe_path"] != item.row["probe_path"]:
                remove_fit(project, replaced["probe_path"])
    return wanted


def _still_wanted(item: Fitted, recorded: dict[str, dict], saved: set[str], overwrite_train: bool) -> bool:
    """Whether a fit or re-score should still be written, now that the lock is held: not when another run
    committed the same combination meanwhile (a fit it need not overwrite), or refitted or dropped the row a
    re-score read."""
    current = recorded.get(item.row["result_id"])
    if item.probe is None:
        return current is not None and current["probe_path"] == item.row["probe_path"]
    return overwrite_train or current is None or current["probe_path"] not in saved or is_pickled(current["probe_path"])
