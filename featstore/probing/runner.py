"""`featstore probe`: fit probes on train views, score them on test views, record each fit in the catalog.

Fitting opens only the train split and evaluation only the test split. Every combination asked for
is fitted first (in parallel processes when there are many, or as tasks on a dask cluster); then, under a
lock, the probe files are put in place and the catalog rows (results, test scores, head weights) committed
in one transaction, so a run that fails writes nothing and a row is visible only when its probe file is there.

Features: `attn` (a token aggregation of the attention rows), `resid` (the last-token residual) and
`length`, the length-only control: log(seq_len) and its square, so a probe can also use a length
that is informative in a middle range. An attention setting that does not beat it tells you the
attention feature may only be tracking prompt length. The shuffled-label control (`control="shuffled-labels"`)
fits the same probe on the training labels permuted (seeded): its test AUC should sit near 0.5, and a setting
whose control does not shows a leak through the split, the padding or the prompt length.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from datetime import datetime, timezone

import dask
import joblib
import numpy as np
import pandas as pd
import xarray as xr

from featstore import __version__
from featstore.catalog.database import catalog_writer
from featstore.catalog.names import built_models, catalog_dataset_names, unknown_model
from featstore.catalog.probe_records import replace_probe_results
from featstore.catalog.safe_sql import run_user_query
from featstore.catalog.splits import TEST, TRAIN
from featstore.cluster import joblib_on_cluster
from featstore.errors import FeatstoreError
from featstore.progress import open_progress
from featstore.project import Project
from featstore.probing.results import parse_short_layers, short_layers
from featstore.store.layout import PROBES, model_dir_name
from featstore.session.holding import holding_store
from featstore.store.locking import waiting_lock
from featstore.views.aggregations import parse_aggregation
from featstore.views.matrix import to_matrix
from featstore.probing.head_weights import head_weights
from featstore.views.view import layer_indices, open_view
from featstore.probing.families import CONTROLS, FAMILIES, SHUFFLED_LABELS
from featstore.probing.saved_probes import SUFFIX, is_pickled, is_probe_key, logs_key, read_probe
from probes import AttentionRows, ProbeInputError, binary_scores, probe_bytes

LAST_TOKEN = "last-token"
LENGTH_FEATURE = "length"
LENGTH_AGGREGATION = "log-seq_len"
ROWS_AGGREGATION = "rows"
STACK = re.compile(r"stack\[(?P<bases>.+)\]")
HEAD_WEIGHT_COLUMNS = ["layer", "head", "weight"]


@dataclass(frozen=True)
class ProbeSpec:
    """One combination to fit: a dataset's features under a model, a layer set, an aggregation and a probe."""

    dataset: str
    model: str
    feature: str
    layers: tuple[int, ...]
    aggregation: str
    probe: str
    seed: int = 0
    baseline: bool = False
    control: str = ""

    @property
    def layers_label(self) -> str:
        return ",".join(map(str, self.layers))

    @property
    def result_id(self) -> str:
        fields = [self.dataset, self.model, self.feature, self.layers_label, "all", self.aggregation, self.probe,
                  self.seed, self.baseline] + ([self.control] if self.control else [])  # older ids unchanged
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class ProbeRequest:
    """What `featstore probe` asks for, before it is expanded into one ProbeSpec per combination."""

    model: str
    datasets: list[str] | None = None
    feature: str = "attn"
    layers: list[str] | None = None
    aggregations: list[str] | None = None
    probes: list[str] = field(default_factory=lambda: ["logreg"])
    seed: int = 0
    seeds: int = 1
    control: str = ""
    baseline: bool = False
    baseline_layer: int | None = None
    hard_threshold: float | None = None
    each_layer: bool = False


def plan_specs(project: Project, request: ProbeRequest) -> list[ProbeSpec]:
    """The combinations of a request: its datasets (default: all built for the model; the hard subset when a
    threshold is given) times aggregations times probes, or one baseline per dataset; each fitted with `seeds`
    seeds from `seed` on (every probe holds out a seeded validation set), as the control if one is named."""
    if request.seeds < 1:
        raise FeatstoreError(f"--seeds must be at least 1, not {request.seeds}")
    if request.control not in ("", *CONTROLS):
        raise FeatstoreError(f"unknown control {request.control!r}; choose from {', '.join(CONTROLS)}")
    single = [replace(spec, control=request.control) for spec in _single_seed_specs(project, request)]
    return [replace(spec, seed=request.seed + k) for spec in single for k in range(request.seeds)]


def _single_seed_specs(project: Project, request: ProbeRequest) -> list[ProbeSpec]:
    """`plan_specs` for the request's first seed, without a control."""
    built = run_user_query(
        project.catalog_path,
        "SELECT DISTINCT dataset FROM feature_splits WHERE model = ? AND status = 'complete' ORDER BY dataset",
        [request.model],
    )["dataset"].tolist()
    if not built:
        raise unknown_model(request.model, built_models(project))
    datasets = catalog_dataset_names(project).resolve_all(request.datasets) if request.datasets else built
    missing = [d for d in datasets if d not in built]
    if missing:
        raise FeatstoreError(f"no complete features of {', '.join(missing)} for model {request.model!r}; "
                             f"run `featstore build --model {request.model} --datasets {' '.join(missing)}` first")
    if request.hard_threshold is not None:
        datasets = hard_datasets(project, request.model, datasets, request.hard_threshold)
    if request.baseline:
        ignored = [flag for flag, given in (("--feature", request.feature != "attn"), ("--layers", request.layers),
                                            ("--each-layer", request.each_layer), ("--aggregation", request.aggregations),
                                            ("--probe", request.probes != ["logreg"])) if given]
        if ignored:
            raise FeatstoreError(f"--baseline fits the SAE-Probes baseline only (last-token residual, logreg); "
                                 f"drop {', '.join(ignored)} or run them separately")
        return baseline_specs(project, request.model, datasets, request.baseline_layer, request.seed)
    aggregations = aggregation_names(request.feature, request.aggregations)
    if request.feature == LENGTH_FEATURE and (request.layers or request.each_layer):
        raise FeatstoreError("--layers and --each-layer do not apply to --feature length (it reads seq_len only)")
    inputs = {FAMILIES[probe].input for probe in request.probes}
    if inputs - {"matrix"} and request.feature != "attn":
        raise FeatstoreError("--probe attention-row and meta read attention rows: use them with --feature attn")
    specs = []
    for dataset in datasets:
        layers = () if request.feature == LENGTH_FEATURE else resolve_layers(project, dataset, request.model, request.layers)
        layer_sets = [(layer,) for layer in layers] if request.each_layer else [layers]
        for probe in dict.fromkeys(request.probes):
            family = FAMILIES[probe].input
            if family == "rows":
                specs += [ProbeSpec(dataset, request.model, "attn", layer_set, ROWS_AGGREGATION, probe, request.seed)
                          for layer_set in layer_sets]
            elif family == "stack":
                bases = ";".join(f"{short_layers(','.join(map(str, s)))} {a}" for s in layer_sets for a in aggregations)
                specs.append(ProbeSpec(dataset, request.model, "attn", layers, f"stack[{bases}]", probe, request.seed))
            else:
                specs += [ProbeSpec(dataset, request.model, request.feature, layer_set, aggregation, probe, request.seed)
                          for layer_set in layer_sets for aggregation in aggregations]
    return specs


def aggregation_names(feature: str, requested: list[str] | None) -> list[str]:
    """Canonical aggregation names: token aggregations for attn (default `first`), fixed ones for resid and length."""
    fixed = {"resid": LAST_TOKEN, LENGTH_FEATURE: LENGTH_AGGREGATION}
    if feature in fixed:
        if requested:
            raise FeatstoreError(f"--aggregation applies to --feature attn; {feature} takes none")
        return [fixed[feature]]
    return list(dict.fromkeys(parse_aggregation(spec)[0] for spec in requested or ["first"]))


def resolve_layers(project: Project, dataset: str, model: str, layers: list[str] | None) -> tuple[int, ...]:
    """Layer indices from `all`, integers, or negative integers counted from the end."""
    n_layers = model_layers(project, dataset, model)
    if not layers or layers == ["all"]:
        return tuple(range(n_layers))
    try:
        numbers = [int(layer) for layer in layers]
    except ValueError:
        raise FeatstoreError(f"--layers takes 'all' or layer numbers, not {' '.join(layers)!r}") from None
    return tuple(sorted(set(layer_indices(numbers, n_layers, model))))


def model_layers(project: Project, dataset: str, model: str) -> int:
    """The number of layers of the model whose features a dataset has (from the catalog, no array opened)."""
    found = run_user_query(
        project.catalog_path,
        "SELECT max(n_layers) AS n FROM feature_splits WHERE model = ? AND dataset = ? AND status = 'complete'",
        [model, dataset],
    )["n"][0]
    if pd.isna(found):
        raise FeatstoreError(f"no complete features of {dataset} for model {model!r}; run `featstore build` first")
    return int(found)


@dataclass(frozen=True)
class FeatureMatrix:
    """One split's probe input: X (examples x features), labels, the examples' ids and the features' names."""

    X: np.ndarray
    y: np.ndarray
    example_ids: np.ndarray
    names: list[str]


def feature_matrix(project: Project, spec: ProbeSpec, split: str) -> FeatureMatrix:
    """The probe input of one split, read from that split alone: a matrix, lazy attention rows (read batch by
    batch while fitting), or one matrix per base setting of a stack."""
    stack = STACK.fullmatch(spec.aggregation)
    if stack:
        bases = [feature_matrix(project, replace(spec, layers=parse_short_layers(layers), aggregation=aggregation), split)
                 for layers, aggregation in (base.split(" ", 1) for base in stack["bases"].split(";"))]
        return FeatureMatrix([b.X for b in bases], bases[0].y, bases[0].example_ids, [])
    rows = spec.aggregation == ROWS_AGGREGATION  # read in contiguous batches: straight through zarr is faster
    view = open_view(project, spec.dataset, split, model=spec.model, layers=list(spec.layers) or None, dask=not rows)
    if rows:
        names = [f"L{layer}.H{head}" for layer in view["layer"].values for head in view["head"].values]
        return FeatureMatrix(AttentionRows.from_view(view), view["label"].values, view["example_id"].values, names)
    if spec.feature == LENGTH_FEATURE:
        log_length = np.log(view["seq_len"].astype(np.float64))
        data = xr.Dataset({"log_seq_len": log_length, "log_seq_len_squared": log_length**2})
    elif spec.feature == "resid":
        data = view["resid"]
    else:
        data = parse_aggregation(spec.aggregation)[1](view["attn"])
    X, y, names = to_matrix(data)
    return FeatureMatrix(X, y, view["example_id"].values, names)


def run_probes(project: Project, specs: list[ProbeSpec], overwrite_train: bool = False,
               overwrite_eval: bool = False, jobs: int | None = None, cluster: str | None = None) -> pd.DataFrame:
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
        done = _readable(_with_saved_probe(project, _recorded(project)), specs)
        refit = [s for s in specs if s.result_id not in done or overwrite_train]
        rescore = [s for s in specs if s.result_id in done and overwrite_eval and not overwrite_train]
        _check_splits(project, refit, (TRAIN, TEST))
        _check_splits(project, rescore, (TEST,))
        tasks = [(spec, None) for spec in refit] + [(spec, done[spec.result_id]) for spec in rescore]
        capacity, scratch_parent = None, None
        if cluster is not None and tasks:  # workers write learning curves into scratch: it must be on their disk
            capacity, scratch_parent = stack.enter_context(joblib_on_cluster(cluster)), project.store_dir
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix=".featstore-probe-", dir=scratch_parent))
        fitted = _fit_all(project, tasks, Path(scratch), capacity or jobs, capacity)
        written = _write(project, fitted, overwrite_train)
    return pd.DataFrame([f.row for f in written])


FITS_PER_WORKER = 2  # below 2 x this, one process: starting a worker costs about as much as a fit


@dataclass
class Fitted:
    """What one fit or re-evaluation writes: the result row, its test scores, and (after a fit) the probe,
    its head weights and the folder of its learning curves; plus the warnings raised on the way."""

    row: dict
    scores: pd.DataFrame
    probe: object | None = None
    head_weights: pd.DataFrame | None = None
    logs: Path | None = None
    warnings: list[tuple] = field(default_factory=list)


def _readable(done: dict[str, dict], specs: list[ProbeSpec]) -> dict[str, dict]:
    """The rows of `done` whose saved probe can be read: those of this run's specs that an older featstore
    saved as pickles (never loaded) are left out, so they are refitted, and a warning says so."""
    pickled = {s.result_id for s in specs if s.result_id in done and is_pickled(done[s.result_id]["probe_path"])}
    if pickled:
        warnings.warn(f"{len(pickled)} saved probe(s) of this run are pickles written by an older featstore, never "
                      "loaded: refitting them", stacklevel=3)
    return {rid: row for rid, row in done.items() if rid not in pickled}


def _fit_all(project: Project, tasks: list[tuple[ProbeSpec, dict | None]], scratch: Path,
             jobs: int | None, capacity: int | None = None) -> list[Fitted]:
    """Fit (or re-score, where a previous row is given) every task, in worker processes when there are many
    (at most `capacity` at once: by default this machine's CPUs); each one's warnings are re-issued here,
    naming its dataset and setting."""
    workers = min(jobs or max(1, len(tasks) // FITS_PER_WORKER), capacity or _usable_cpus(), max(1, len(tasks)))
    calls = (joblib.delayed(_fit_or_rescore)(project, spec, previous, scratch) for spec, previous in tasks)
    fitted = []
    with open_progress(len(tasks), "probe", "probe") as progress:
        for item in joblib.Parallel(n_jobs=workers, return_as="generator")(calls):
            for category, message, filename, lineno in item.warnings:
                warnings.warn_explicit(message, category, filename, lineno)
            fitted.append(item)
            progress.update()
    return fitted


def _usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    parts = [f"{spec.feature} {short_layers(spec.layers_label)}".strip(), spec.aggregation, spec.probe]
    extra = ["baseline"] * spec.baseline + [spec.control] * bool(spec.control) + [f"seed {spec.seed}"] * bool(spec.seed)
    return f"{spec.dataset} ({', '.join(parts + extra)})"


def fit_and_score(project: Project, spec: ProbeSpec, scratch: Path) -> Fitted:
    """Fit on the train split, score on the test split; learning curves (if the probe keeps any) go to `scratch`."""
    train = feature_matrix(project, spec, TRAIN)
    if spec.control == SHUFFLED_LABELS:
        train = replace(train, y=shuffled(train.y, spec.seed))
    probe = FAMILIES[spec.probe].make(spec.seed)
    probe_path = _new_probe_path(spec)
    logs = None
    if "log_dir" in probe.get_params():  # learning curves, moved in beside the saved probe when it is written
        logs = scratch / spec.result_id
        probe.set_params(log_dir=str(logs))
    started = time.perf_counter()
    with _probe_errors(spec):
        probe.fit(train.X, train.y)
    if logs is not None:
        probe.set_params(log_dir=project.store.describe(logs_key(probe_path)))
    seconds = time.perf_counter() - started
    weights = head_weights(standardised_weights(probe, train), train.names)
    n_train = len(train.y)
    del train
    row, scores = _score(project, spec, probe, seconds, n_train, probe_path)
    return Fitted(row, scores, probe, _keyed(weights, spec.result_id, HEAD_WEIGHT_COLUMNS), logs)


def shuffled(labels: np.ndarray, seed: int) -> np.ndarray:
    """The labels permuted by a generator seeded with `seed`: the shuffled-label control's training labels."""
    return labels[np.random.default_rng(seed).permutation(len(labels))]


def reevaluate(project: Project, spec: ProbeSpec, previous: dict) -> Fitted:
    """Score a saved probe on the test split again, without refitting (reads no train data)."""
    key = previous["probe_path"]
    probe = read_probe(project, key)
    if type(probe) is not type(FAMILIES[spec.probe].make(spec.seed)):
        raise FeatstoreError(f"the saved probe {project.store.describe(key)} is a {type(probe).__name__}, not a "
                             f"{spec.probe} probe; refit it with --overwrite-train")
    row, scores = _score(project, spec, probe, previous["fit_seconds"], previous["n_train"], previous["probe_path"])
    return Fitted({**row, "created_at": previous["created_at"]}, scores)


def _score(project: Project, spec: ProbeSpec, probe, fit_seconds: float, n_train: int,
           probe_path: str) -> tuple[dict, pd.DataFrame]:
    """The result row and the per-example decision scores of a fitted probe on the test split."""
    test = feature_matrix(project, spec, TEST)
    with _probe_errors(spec):
        decision = probe.decision_function(test.X)  # once: scoring lazy rows is a pass over the split
        metrics = binary_scores(test.y == probe.classes_[1], decision, decision > 0)
    scores = pd.DataFrame({"example_id": test.example_ids.astype(np.int64), "score": decision})
    row = _row(spec, probe, metrics, n_train, fit_seconds, probe_path)
    return row, _keyed(scores, spec.result_id, ["example_id", "score"])


def standardised_weights(probe, train: FeatureMatrix) -> np.ndarray:
    """What the probe puts on each feature of `train.names`, on standardised features: a linear probe's weights
    times the features' training standard deviations, or a learned row probe's per-head importance."""
    if hasattr(probe, "head_importance"):
        return probe.head_importance().ravel()
    if hasattr(probe, "feature_weights") and not isinstance(train.X, list):
        return probe.feature_weights() * train.X.std(axis=0, dtype=np.float64)
    return np.zeros(len(train.names))


def _keyed(frame: pd.DataFrame, result_id: str, columns: list[str]) -> pd.DataFrame:
    """`frame`'s columns with a result_id column first."""
    return frame[columns].assign(result_id=result_id)[["result_id", *columns]]


def baseline_specs(project: Project, model: str, datasets: list[str], layer: int | None, seed: int) -> list[ProbeSpec]:
    """The SAE-Probes baseline per dataset: logistic regression on the last-token residual at one layer (default: the middle)."""
    specs = []
    for dataset in datasets:
        n_layers = model_layers(project, dataset, model)
        chosen = layer_indices([n_layers // 2 if layer is None else layer], n_layers, model)
        specs.append(ProbeSpec(dataset, model, "resid", tuple(chosen), LAST_TOKEN, "logreg", seed, baseline=True))
    return specs


def hard_datasets(project: Project, model: str, datasets: list[str], threshold: float) -> list[str]:
    """The datasets whose baseline test AUC is below `threshold` (the SAE-Probes hard subset)."""
    baselines = run_user_query(project.catalog_path, "SELECT dataset, roc_auc FROM baselines WHERE model = ?", [model])
    missing = sorted(set(datasets) - set(baselines["dataset"]))
    if missing:
        raise FeatstoreError(f"no baseline for {', '.join(missing)} under {model}; run `featstore probe --baseline` first")
    hard = set(baselines.loc[baselines["roc_auc"] < threshold, "dataset"])
    return [d for d in datasets if d in hard]


@contextmanager
def _probe_errors(spec: ProbeSpec) -> Iterator[None]:
    """A probe's refusal (one class, NaN, shapes) as a one-line featstore error naming the combination."""
    try:
        yield
    except ProbeInputError as err:
        raise FeatstoreError(f"{spec.dataset} ({spec.feature}, {spec.aggregation}, {spec.probe}): {err}") from None


def _check_splits(project: Project, specs: list[ProbeSpec], splits: tuple[str, ...]) -> None:
    """Fail before any fit when a needed split lacks complete features or has one class (from the catalog only)."""
    for dataset, model in sorted({(s.dataset, s.model) for s in specs}):
        counts = run_user_query(
            project.catalog_path,
            "SELECT s.split, count(DISTINCT e.label) AS classes FROM feature_splits s "
            "JOIN features f USING (model, dataset, split) JOIN examples e USING (example_id) "
            "WHERE s.model = ? AND s.dataset = ? AND s.status = 'complete' GROUP BY s.split",
            [model, dataset],
        ).set_index("split")["classes"]
        for split in splits:
            if split not in counts:
                raise FeatstoreError(f"no complete {split} features of {dataset} for model {model!r}; run `featstore build` first")
            if counts[split] < 2:
                raise FeatstoreError(f"{dataset}: the {split} split of {model} has one class only; probes need both")


def _row(spec: ProbeSpec, probe, scores: dict, n_train: int, seconds: float, probe_path: str) -> dict:
    return {
        "result_id": spec.result_id, "dataset": spec.dataset, "model": spec.model, "feature": spec.feature,
        "layers": spec.layers_label, "heads": "all", "aggregation": spec.aggregation, "probe": spec.probe,
        "baseline": spec.baseline, "hyperparameters": json.dumps(probe.chosen_hyperparameters()),
        "roc_auc": scores["roc_auc"], "roc_auc_ci_low": scores["roc_auc_ci_low"],
        "roc_auc_ci_high": scores["roc_auc_ci_high"], "accuracy": scores["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"], "f1": scores["f1"], "n_train": n_train,
        "n_test": scores["n"], "n_features": int(probe.n_features_in_), "seed": spec.seed, "control": spec.control,
        "fit_seconds": seconds,
        "featstore_version": __version__, "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "probe_path": probe_path,
    }


def _recorded(project: Project) -> dict[str, dict]:
    """Every row of `probe_results`, by result id."""
    frame = run_user_query(project.catalog_path, "SELECT * FROM probe_results")
    return {row["result_id"]: row for row in frame.to_dict("records")}


def _with_saved_probe(project: Project, recorded: dict[str, dict]) -> dict[str, dict]:
    """The rows whose saved probe is in place (one listing of the store's probe files)."""
    saved = set(project.store.list(PROBES))
    return {rid: row for rid, row in recorded.items() if row["probe_path"] in saved}


def _write(project: Project, fitted: list[Fitted], overwrite_train: bool) -> list[Fitted]:
    """Under the probe lock: remove what killed runs left, put each new probe file (and learning curves) in
    place, then commit the rows in one transaction, then delete the files of the rows it replaced. A row is
    visible only once its file is in place. Results another run committed meanwhile are kept, not
    duplicated. Returns what was written."""
    with waiting_lock(project.probe_lock_path):
        recorded = _recorded(project)
        saved = _remove_orphans(project, recorded)
        wanted = [item for item in fitted if _still_wanted(item, recorded, saved, overwrite_train)]
        if not wanted:
            return []
        placed: list[str] = []
        committing = False
        try:
            for item in wanted:
                if item.probe is not None:
                    placed.append(_place(project, item))
            refitted = [item for item in wanted if item.head_weights is not None]
            with catalog_writer(project) as con:
                committing = True  # from here the commit may have happened: the next run decides
                replace_probe_results(
                    con, pd.DataFrame([item.row for item in wanted]), pd.concat([item.scores for item in wanted]),
                    pd.concat([item.head_weights for item in refitted]
                              or [_keyed(head_weights(np.zeros(0), []), "", HEAD_WEIGHT_COLUMNS)]),
                    [item.row["result_id"] for item in refitted],
                )
        except BaseException:
            if not committing:  # nothing refers to the files yet
                for key in placed:
                    _remove_fit(project, key)
            raise
        for item in refitted:
            replaced = recorded.get(item.row["result_id"])
            if replaced and replaced["probe_path"] != item.row["probe_path"]:
                _remove_fit(project, replaced["probe_path"])
    return wanted


def _still_wanted(item: Fitted, recorded: dict[str, dict], saved: set[str], overwrite_train: bool) -> bool:
    """Whether a fit or re-score should still be written, now that the lock is held: not when another run
    committed the same combination meanwhile (a fit it need not overwrite), or refitted or dropped the row a
    re-score read."""
    current = recorded.get(item.row["result_id"])
    if item.probe is None:
        return current is not None and current["probe_path"] == item.row["probe_path"]
    return overwrite_train or current is None or current["probe_path"] not in saved or is_pickled(current["probe_path"])


def _place(project: Project, item: Fitted) -> str:
    """Put a fit's learning curves, then its probe file, into the store (each file whole: a staged rename in a
    folder, one PUT in a bucket), so a probe file in place means its curves are too. Returns the probe's key."""
    key = item.row["probe_path"]
    try:
        if item.logs is not None and item.logs.is_dir():
            project.store.put_folder(item.logs, logs_key(key))
        with tempfile.TemporaryDirectory(prefix="featstore-probe-") as scratch:
            saved = Path(scratch) / f"probe{SUFFIX}"
            saved.write_bytes(probe_bytes(item.probe))
            project.store.put_file(saved, key)
    except BaseException:
        _remove_fit(project, key)
        raise
    return key


def _remove_orphans(project: Project, recorded: dict[str, dict]) -> set[str]:
    """Delete, under the probe lock, the staged files and the probe files (with learning curves) that no row
    refers to: what a run killed before or after its catalog commit, or a dropped result, left behind.
    Returns the probe files kept."""
    referenced = {row["probe_path"] for row in recorded.values()}
    owners = {logs_key(key): key for key in referenced}
    saved = set()
    for key in project.store.list(PROBES):  # probes/<model>/<dataset>/<entry>[/<learning-curve file>]
        entry = "/".join(key.split("/")[:4])
        if owners.get(entry, entry) in referenced and ".staged" not in key:
            saved.add(key)
        else:
            project.store.delete([key])
    return saved


def _remove_fit(project: Project, probe_key: str) -> None:
    """Delete a fit's probe file (a file) and its learning curves (a folder), whichever are there; a key that
    names no probe file (a hostile catalog's) is refused before anything is deleted."""
    if not is_probe_key(probe_key):
        raise FeatstoreError(f"the catalog names {probe_key!r} as a probe file, which no probe file is: not deleted")
    project.store.delete([probe_key])
    project.store.delete_folder(logs_key(probe_key))


def _new_probe_path(spec: ProbeSpec) -> str:
    """Where a new fit of a spec is saved, relative to the store: a name of its own, so a refit never
    overwrites the file that the committed row still refers to."""
    return f"{PROBES}/{model_dir_name(spec.model)}/{spec.dataset}/{spec.result_id}-{uuid.uuid4().hex[:12]}{SUFFIX}"
