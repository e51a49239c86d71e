"""`featstore probe`: fit probes on train views, score them on test views, record each fit in the catalog.

Fitting opens only the train split and evaluation only the test split. Every combination asked for
is fitted first; the probe files and catalog rows are written together at the end, so a run that
fails writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import joblib
import numpy as np
import pandas as pd
from tqdm import tqdm

from featstore import __version__
from featstore.catalog.database import catalog_writer
from featstore.catalog.safe_sql import run_user_query
from featstore.catalog.splits import TEST, TRAIN
from featstore.errors import FeatstoreError
from featstore.project import Project
from featstore.store.layout import model_dir_name
from featstore.views.aggregations import parse_aggregation
from featstore.views.matrix import to_matrix
from featstore.views.view import layer_indices, open_view
from probes import LogisticRegressionProbe, MassMeanProbe, ProbeInputError

PROBES = {
    "logreg": lambda seed: LogisticRegressionProbe(random_state=seed),
    "mass-mean": lambda seed: MassMeanProbe(random_state=seed),
    "mass-mean-lda": lambda seed: MassMeanProbe(tilt="lda", random_state=seed),
}
LAST_TOKEN = "last-token"


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

    @property
    def layers_label(self) -> str:
        return ",".join(map(str, self.layers))

    @property
    def result_id(self) -> str:
        fields = [self.dataset, self.model, self.feature, self.layers_label, "all", self.aggregation, self.probe,
                  self.seed, self.baseline]
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
    baseline: bool = False
    baseline_layer: int | None = None
    hard_threshold: float | None = None


def plan_specs(project: Project, request: ProbeRequest) -> list[ProbeSpec]:
    """The combinations of a request: its datasets (default: all built for the model; the hard subset when a
    threshold is given) times aggregations times probes, or one baseline per dataset."""
    built = run_user_query(
        project.catalog_path,
        "SELECT DISTINCT dataset FROM feature_splits WHERE model = ? AND status = 'complete' ORDER BY dataset",
        [request.model],
    )["dataset"].tolist()
    datasets = list(dict.fromkeys(request.datasets or built))
    if not datasets:
        raise FeatstoreError(
            f"no features built for model {request.model!r}; run `featstore build --model {request.model}` first"
        )
    missing = [d for d in datasets if d not in built]
    if missing:
        raise FeatstoreError(
            f"no complete features of {', '.join(missing)} for model {request.model!r}; run `featstore build` first"
        )
    if request.hard_threshold is not None:
        datasets = hard_datasets(project, request.model, datasets, request.hard_threshold)
    if request.baseline:
        return baseline_specs(project, request.model, datasets, request.baseline_layer, request.seed)
    aggregations = aggregation_names(request.feature, request.aggregations)
    return [
        ProbeSpec(dataset, request.model, request.feature, resolve_layers(project, dataset, request.model, request.layers),
                  aggregation, probe, request.seed)
        for dataset in datasets for aggregation in aggregations for probe in dict.fromkeys(request.probes)
    ]


def aggregation_names(feature: str, requested: list[str] | None) -> list[str]:
    """Canonical aggregation names: token aggregations for attn (default `first`), the last token for resid."""
    if feature == "resid":
        if requested:
            raise FeatstoreError("--aggregation applies to --feature attn; resid is read at the last token")
        return [LAST_TOKEN]
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


def feature_matrix(project: Project, spec: ProbeSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The (examples x features) matrix and labels of one split, read from that split alone."""
    view = open_view(project, spec.dataset, split, model=spec.model, layers=list(spec.layers))
    if spec.feature == "resid":
        data = view["resid"]
    else:
        data = parse_aggregation(spec.aggregation)[1](view["attn"])
    X, y, _ = to_matrix(data)
    return X, y


def run_probes(project: Project, specs: list[ProbeSpec], overwrite_train: bool = False,
               overwrite_eval: bool = False) -> pd.DataFrame:
    """Fit (or re-evaluate) every spec not already in `probe_results`; returns the rows written.

    Probe results are deleted whenever their dataset is re-cleaned or its features rebuilt, so a skipped
    combination always refers to the features in the store now.
    """
    specs = list(dict.fromkeys(specs))
    done = _existing(project)
    refit = [s for s in specs if s.result_id not in done or overwrite_train]
    rescore = [s for s in specs if s.result_id in done and overwrite_eval and not overwrite_train]
    _check_splits(project, refit, (TRAIN, TEST))
    _check_splits(project, rescore, (TEST,))
    fitted: list[tuple[dict, object | None]] = []
    for spec in tqdm(refit + rescore, unit="probe", desc="probe", disable=None):
        if spec in rescore:
            fitted.append((reevaluate(project, spec, done[spec.result_id]), None))
        else:
            fitted.append(fit_and_score(project, spec))
    rows = pd.DataFrame([row for row, _ in fitted])
    if fitted:
        _write(project, fitted)
    return rows


def fit_and_score(project: Project, spec: ProbeSpec) -> tuple[dict, object]:
    """Fit on the train split, score on the test split."""
    X_train, y_train = feature_matrix(project, spec, TRAIN)
    probe = PROBES[spec.probe](spec.seed)
    started = time.perf_counter()
    with _probe_errors(spec):
        probe.fit(X_train, y_train)
    seconds = time.perf_counter() - started
    del X_train
    X_test, y_test = feature_matrix(project, spec, TEST)
    with _probe_errors(spec):
        scores = probe.score(X_test, y_test)
    return _row(spec, probe, scores, len(y_train), seconds), probe


def reevaluate(project: Project, spec: ProbeSpec, previous: dict) -> dict:
    """Score a saved probe on the test split again, without refitting (reads no train data)."""
    path = project.store_dir / previous["probe_path"]
    if not path.exists():
        raise FeatstoreError(f"the saved probe {path} is missing; rerun with --overwrite-train")
    probe = joblib.load(path)
    X_test, y_test = feature_matrix(project, spec, TEST)
    with _probe_errors(spec):
        scores = probe.score(X_test, y_test)
    return {**_row(spec, probe, scores, previous["n_train"], previous["fit_seconds"]), "created_at": previous["created_at"]}


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


def _row(spec: ProbeSpec, probe, scores: dict, n_train: int, seconds: float) -> dict:
    return {
        "result_id": spec.result_id, "dataset": spec.dataset, "model": spec.model, "feature": spec.feature,
        "layers": spec.layers_label, "heads": "all", "aggregation": spec.aggregation, "probe": spec.probe,
        "baseline": spec.baseline, "hyperparameters": json.dumps(probe.chosen_hyperparameters()),
        "roc_auc": scores["roc_auc"], "accuracy": scores["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"], "f1": scores["f1"], "n_train": n_train,
        "n_test": scores["n"], "n_features": int(probe.n_features_in_), "seed": spec.seed, "fit_seconds": seconds,
        "featstore_version": __version__, "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
        "probe_path": f"probes/{model_dir_name(spec.model)}/{spec.dataset}/{spec.result_id}.joblib",
    }


def _existing(project: Project) -> dict[str, dict]:
    frame = run_user_query(project.catalog_path, "SELECT * FROM probe_results")
    return {row["result_id"]: row for row in frame.to_dict("records")}


def _write(project: Project, fitted: list[tuple[dict, object | None]]) -> None:
    """Probe files staged under temporary names, rows committed, then the files moved into place."""
    staged = []
    try:
        for row, probe in fitted:
            if probe is not None:
                path = project.store_dir / row["probe_path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                joblib.dump(probe, path.with_suffix(".staged"))
                staged.append(path)
        rows = pd.DataFrame([row for row, _ in fitted])
        with catalog_writer(project) as con:
            con.execute("BEGIN TRANSACTION")
            con.register("new_results", rows)
            con.execute("DELETE FROM probe_results WHERE result_id IN (SELECT result_id FROM new_results)")
            con.execute("INSERT INTO probe_results BY NAME SELECT * FROM new_results")
            con.unregister("new_results")
            con.execute("COMMIT")
        for path in staged:
            os.replace(path.with_suffix(".staged"), path)
    finally:
        for path in staged:
            path.with_suffix(".staged").unlink(missing_ok=True)
