"""`featstore probe`: fit probes on train views, score them on test views, record each fit in the catalog.

The coordinator: it takes the planned specs (`plan`), leaves out those already done (`persist`), checks their
splits (`inputs`), fits or re-scores the rest (`fit`) in parallel processes when there are many (or as tasks on a
dask cluster), and writes them under the probe lock (`persist`).
"""

from __future__ import annotations

import tempfile
import warnings
from contextlib import ExitStack
from pathlib import Path

import dask
import joblib
import pandas as pd

from featstore.catalog.splits import TEST, TRAIN
from featstore.cluster import joblib_on_cluster, usable_cpus
from featstore.errors import FeatstoreError
from featstore.probing.fit import Fitted, fit_and_score, reevaluate
from featstore.probing.inputs import check_splits
from featstore.probing.persist import done_results, write_fits
from featstore.probing.specs import ProbeSpec, short_layers
from featstore.progress import open_progress
from featstore.project import Project
from featstore.session.holding import holding_store

FITS_PER_WORKER = 2  # below 2 x this, one process: starting a worker costs about as much as a fit


def run_probes(
    project: Project,
    specs: list[ProbeSpec],
    overwrite_train: bool = False,
    overwrite_eval: bool = False,
    jobs: int | None = None,
    cluster: str | None = None,
) -> pd.DataFrame:
    """Fit (or re-evaluate) every spec not already in `probe_results`; returns the rows written.

    Probe results are deleted whenever their dataset is re-cleaned or its features rebuilt, so a skipped
    combination always refers to the features in the store now. A row whose saved probe is missing (left by
    an older version killed mid-write) counts as not done. Independent combinations are fitted in `jobs`
    processes (default: by the number of fits and CPUs), or with `cluster` (a scheduler address or `local:N`) as
    tasks on a dask cluster's workers; the results are written here either way.
    """
    if cluster is not None and jobs is not None:
        raise FeatstoreError("--jobs and --cluster exclude each other: a cluster runs as many fits as it has threads")
    specs = list(dict.fromkeys(specs))
    with holding_store(project, "featstore probe", local_lock=False), ExitStack() as stack:
        done = done_results(project, specs)
        refit = [s for s in specs if s.result_id not in done or overwrite_train]
        rescore = [s for s in specs if s.result_id in done and overwrite_eval and not overwrite_train]
        check_splits(project, refit, (TRAIN, TEST))
        check_splits(project, rescore, (TEST,))
        tasks = [(spec, None) for spec in refit] + [(spec, done[spec.result_id]) for spec in rescore]
        capacity, scratch_parent = None, None
        if cluster is not None and tasks:  # workers write learning curves into scratch: it must be on their disk
            capacity, scratch_parent = stack.enter_context(joblib_on_cluster(cluster)), project.store_dir
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix=".featstore-probe-", dir=scratch_parent))
        fitted = _fit_all(project, tasks, Path(scratch), capacity or jobs, capacity)
        written = write_fits(project, fitted, overwrite_train)
    return pd.DataFrame([f.row for f in written])


def _fit_all(
    project: Project,
    tasks: list[tuple[ProbeSpec, dict | None]],
    scratch: Path,
    jobs: int | None,
    capacity: int | None = None,
) -> list[Fitted]:
    """Fit (or re-score, where a previous row is given) every task, in worker processes when there are many
    (at most `capacity` at once: by default this machine's CPUs); each one's warnings are re-issued here,
    naming its dataset and setting."""
    workers = min(jobs or max(1, len(tasks) // FITS_PER_WORKER), capacity or usable_cpus(), max(1, len(tasks)))
    calls = (joblib.delayed(_fit_or_rescore)(project, spec, previous, scratch) for spec, previous in tasks)
    fitted = []
    with open_progress(len(tasks), "probe", "probe") as progress:
        for item in joblib.Parallel(n_jobs=workers, return_as="generator")(calls):
            for category, message, filename, lineno in item.warnings:
                warnings.warn_explicit(message, category, filename, lineno)
            fitted.append(item)
            progress.update()
    return fitted


def _fit_or_rescore(project: Project, spec: ProbeSpec, previous: dict | None, scratch: Path) -> Fitted:
    """One task, its warnings recorded (a worker process's would otherwise be lost) and prefixed by its setting.
    Its views are computed in its own process (on a dask worker they would otherwise become cluster tasks, and
    the worker would start another fit meanwhile, mixing their warnings)."""
    with dask.config.set(scheduler="threads"), warnings.catch_warnings(record=True) as caught:
        item = fit_and_score(project, spec, scratch) if previous is None else reevaluate(project, spec, previous)
    item.warnings = [(w.category, f"{_setting(spec)}: {w.message}", w.filename, w.lineno) for w in caught]
    return item


def _setting(spec: ProbeSpec) -> str:
    """The dataset and setting of a spec, as warnings name them: `1_toy (resid L6, last-token, logreg, baseline)`."""
    parts = [f"{spec.feature} {short_layers(spec.layers)}".strip(), spec.aggregation_label, spec.probe]
    extra = ["baseline"] * spec.baseline + [spec.control] * bool(spec.control) + [f"seed {spec.seed}"] * bool(spec.seed)
    return f"{spec.dataset} ({', '.join(parts + extra)})"
