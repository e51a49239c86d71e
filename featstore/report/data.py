"""What the report shows, read from the catalog and from small slices of the stored arrays.

Each function returns JSON-ready dicts; the pages are rendered from them and the same dicts are written
beside the pages as JSON, so what a page shows can be checked against the catalog and the arrays.
Nothing here refits or rescores a probe: AUCs, intervals and scores are the stored ones.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import zarr
from sklearn.metrics import roc_curve

from featstore.catalog.database import catalog_reader
from featstore.catalog.datasets import example_prompts, label_provenance
from featstore.catalog.features import complete_split_counts, model_examples, model_splits, split_summaries
from featstore.catalog.names import catalog_dataset_names, unknown_model
from featstore.catalog.probe_records import (
    count_results,
    model_head_weights,
    model_results,
    result_scores,
    scored_results,
)
from featstore.catalog.splits import TEST
from featstore.errors import FeatstoreError
from featstore.probing.compare import BASELINE, paired_comparisons
from featstore.probing.results import equal_n_means, natural_order, setting_labels
from featstore.probing.specs import LENGTH_FEATURE
from featstore.project import Project
from featstore.store.integrity import SplitRef, open_split_store
from featstore.store.layout import model_dir_name, tokenizer_path
from featstore.store.tokenizers import TokenDecoder
from featstore.views.aggregations import relative_bins
from featstore.views.view import open_view

PROFILE_BINS = 20
PROFILE_EXAMPLES_PER_CLASS = 500
TOP_HEADS = 4
ROC_SETTINGS = 3
EXAMPLES_PER_LIST = 3
TEXTS_PER_CLASS = 3
TEXT_CHARS = 300
LENGTH_BINS = 30
SEED = 0


@dataclass(frozen=True)
class Scope:
    """The models a report covers and, for each, the datasets with complete features to show."""

    models: dict[str, list[str]]
    threshold: float


def resolve_scope(project: Project, models: list[str] | None, datasets: list[str] | None, threshold: float) -> Scope:
    """Every built model and dataset by default; an unknown model or dataset is a one-line error."""
    with catalog_reader(project) as con:
        built = complete_split_counts(con)
    known_models = list(dict.fromkeys(built["model"]))
    unknown = [m for m in models or [] if m not in known_models]
    if unknown:
        raise unknown_model(unknown[0], known_models)
    if datasets:
        datasets = catalog_dataset_names(project).resolve_all(datasets)
        unbuilt = [d for d in datasets if d not in set(built["dataset"])]
        if unbuilt:
            raise FeatstoreError(
                f"dataset {unbuilt[0]!r} has no features yet; run `featstore build --datasets {unbuilt[0]}`"
            )
    chosen = {}
    for model in models or known_models:
        names = built.loc[built["model"] == model, "dataset"].tolist()
        chosen[model] = [d for d in names if not datasets or d in datasets]
    return Scope(chosen, threshold)


@dataclass
class ModelData:
    """One model's catalog rows for the report, read in a few bulk queries: results with their setting labels
    and roles, splits, examples with labels and lengths, head weights, and the test scores the pages need."""

    model: str
    results: pd.DataFrame
    splits: pd.DataFrame
    examples: pd.DataFrame
    head_weights: pd.DataFrame
    scored: set[str]
    scores: pd.DataFrame


def load_model_data(project: Project, model: str, datasets: list[str]) -> ModelData:
    """The catalog rows of `model` on these datasets (scores only of the results the pages show)."""
    with catalog_reader(project) as con:
        results = model_results(con, model, datasets)
        results["setting"] = setting_labels(results)
        results["model"] = model
        results["role"] = np.select(
            [results["control"] != "", results["baseline"], results["feature"] == LENGTH_FEATURE],
            ["control", "baseline", "length"],
            "probe",
        )
        splits = model_splits(con, model, datasets)
        examples = model_examples(con, model, datasets)
        head_weights = model_head_weights(con, model, datasets)
        scored = scored_results(con, results["result_id"].tolist())
        weighted = set(head_weights["result_id"])
        shown = [
            result_id for _, mine in results.groupby("dataset") for result_id in _shown_results(mine, scored, weighted)
        ]
        scores = result_scores(con, shown)
    return ModelData(model, results, splits, examples, head_weights, scored, scores)


def _shown_results(results: pd.DataFrame, scored: set[str], weighted: set[str]) -> list[str]:
    """The results whose scores a dataset page uses: its ROC curves' and its featured setting's."""
    featured = _featured(results, scored, weighted)
    return list(dict.fromkeys(_roc_results(results)["result_id"].tolist() + ([featured.result_id] if featured else [])))


def overview(
    results: pd.DataFrame, datasets: list[str], threshold: float, comparisons: pd.DataFrame | None = None
) -> dict:
    """Datasets x settings (natural order): AUC (the mean over seeds), interval and flags; the hard subset; each
    setting's mean AUC over the datasets every setting has (`n_datasets` of them); with `comparisons` (against
    the baseline), each cell's ΔAUC, Holm-adjusted p and verdict, and each setting's mean ΔAUC over those datasets."""
    ordered = natural_order(results)
    settings = ordered.drop_duplicates("setting")[["setting", "role"]]
    rows = []
    for dataset in datasets:
        mine = results[results["dataset"] == dataset]
        cells = {
            setting: _setting_cell(group, _length_auc(mine)) for setting, group in mine.groupby("setting", sort=False)
        }
        if comparisons is not None:
            for item in comparisons[comparisons["dataset"] == dataset].itertuples():
                cells[item.setting].update(
                    delta=float(item.delta_auc),
                    delta_low=float(item.delta_ci_low),
                    delta_high=float(item.delta_ci_high),
                    p_holm=float(item.p_holm),
                    verdict=item.verdict,
                )
        rows.append({"dataset": dataset, "hard": _hard(mine, threshold), "cells": cells})
    means, common = equal_n_means(results.groupby(["dataset", "setting"])["roc_auc"].mean().unstack())
    deltas = {}
    if comparisons is not None and len(comparisons):
        deltas = comparisons[comparisons["dataset"].isin(common)].groupby("setting")["delta_auc"].mean().to_dict()
    return {
        "threshold": threshold,
        "n_common": len(common),
        "settings": [
            {
                "setting": s,
                "role": r,
                "mean_auc": _float(means.get(s)),
                "n_datasets": len(common),
                "mean_delta": _float(deltas.get(s)),
            }
            for s, r in zip(settings["setting"], settings["role"], strict=False)
        ],
        "rows": rows,
    }


def baseline_comparisons(project: Project, results: pd.DataFrame) -> pd.DataFrame | None:
    """Every setting against the baseline (paired DeLong on the stored scores, Holm across datasets), or None
    without a baseline, or with a warning naming why when they cannot be compared (results fitted before scores were
    stored, several baselines of one dataset): the overview then shows AUCs only."""
    if not (results["role"] == "baseline").any():
        return None
    try:
        return paired_comparisons(project, results, BASELINE)
    except FeatstoreError as err:
        warnings.warn(f"the overview shows no ΔAUC against the baseline: {err}", stacklevel=2)
        return None


def dataset_page(project: Project, data: ModelData, dataset: str, threshold: float) -> dict:
    """Everything the dataset page shows, from the model's catalog rows and a small slice of the test split."""
    mine = data.results[data.results["dataset"] == dataset].sort_values("roc_auc", ascending=False, kind="stable")
    mine = mine.assign(setting=_seeded_settings(mine))
    length_auc = _length_auc(mine)
    featured = _featured(mine, data.scored, set(data.head_weights["result_id"]))
    splits = data.splits[data.splits["dataset"] == dataset]
    examples = data.examples[data.examples["dataset"] == dataset]
    with catalog_reader(project) as con:
        labels = label_provenance(con, dataset)
        texts = example_texts(con, examples[examples["split"] == TEST])
    page = {
        "model": data.model,
        "dataset": dataset,
        "hard": _hard(mine, threshold),
        "threshold": threshold,
        "splits": splits.drop(columns="dataset").to_dict("records"),
        "results": [
            {
                **_cell(row, length_auc),
                "setting": row.setting,
                "role": row.role,
                "n_train": int(row.n_train),
                "n_test": int(row.n_test),
                "n_features": int(row.n_features),
            }
            for row in mine.itertuples()
        ],
        "roc": roc_curves(_roc_results(mine), data.scores, examples),
        "layer_curves": layer_curves(mine),
        "featured": None,
        "head_map": None,
        "top_heads": [],
        "lengths": length_histogram(examples),
        "examples": {},
        "labels": labels,
        "texts": texts,
    }
    if featured is None:
        return page
    page["featured"] = {"setting": featured.setting, "result_id": featured.result_id, "feature": featured.feature}
    weights = data.head_weights[data.head_weights["result_id"] == featured.result_id]
    if len(weights):
        page["head_map"] = head_map(weights, int(splits["n_heads"].max()))
        top = weights.sort_values(["weight", "layer", "head"], ascending=[False, True, True], kind="stable").head(
            TOP_HEADS
        )
        page["top_heads"] = class_profiles(project, data.model, dataset, top)
    page["examples"] = example_lists(data.scores[data.scores["result_id"] == featured.result_id], examples)
    return page


def example_texts(con: duckdb.DuckDBPyConnection, examples: pd.DataFrame) -> list[dict]:
    """A seeded few test prompts of each class (positives first), cut to TEXT_CHARS characters, so a reader sees
    what the dataset's classes look like; `n_chars` is the whole prompt's length."""
    chosen = examples.iloc[_sample_per_class(examples["label"].to_numpy(), TEXTS_PER_CLASS)]
    prompts = example_prompts(con, chosen["example_id"].tolist())
    rows = (
        chosen[["example_id", "label"]]
        .merge(prompts, on="example_id")
        .sort_values(["label", "example_id"], ascending=[False, True])
    )
    return [
        {
            "example_id": int(row.example_id),
            "label": int(row.label),
            "n_chars": len(row.prompt),
            "text": row.prompt if len(row.prompt) <= TEXT_CHARS else row.prompt[: TEXT_CHARS - 1] + "…",
        }
        for row in rows.itertuples()
    ]


def _seeded_settings(results: pd.DataFrame) -> pd.Series:
    """Each result's setting, with ` (seed N)` where the page lists several seeds of it (one row, curve and point
    each), so no two rows of a dataset page share a label."""
    repeated = results["setting"].duplicated(keep=False)
    return results["setting"].where(~repeated, results["setting"] + " (seed " + results["seed"].astype(str) + ")")


def roc_curves(chosen: pd.DataFrame, scores: pd.DataFrame, examples: pd.DataFrame) -> list[dict]:
    """ROC curves from the stored test scores of the chosen results."""
    labels = examples.set_index("example_id")["label"]
    curves = []
    for row in chosen.itertuples():
        mine = scores[scores["result_id"] == row.result_id]
        if mine.empty:  # fitted before scores were kept: `featstore probe --overwrite-eval` stores them
            continue
        fpr, tpr, _ = roc_curve(labels.loc[mine["example_id"]].to_numpy(), mine["score"].to_numpy())
        curves.append(
            {
                "setting": row.setting,
                "role": row.role,
                "result_id": row.result_id,
                "auc": float(row.roc_auc),
                "fpr": fpr.round(5).tolist(),
                "tpr": tpr.round(5).tolist(),
            }
        )
    return curves


def _roc_results(results: pd.DataFrame) -> pd.DataFrame:
    """The settings a dataset's ROC chart shows: its best probe settings, the baseline and the length control."""
    ranked = results.sort_values("roc_auc", ascending=False, kind="stable")
    return pd.concat([ranked[ranked["role"] == "probe"].head(ROC_SETTINGS), ranked[ranked["role"] != "probe"]])


def layer_curves(results: pd.DataFrame) -> list[dict]:
    """AUC against layer for every setting fitted on single layers at two or more layers."""
    single = results[(results["layers"] != "") & ~results["layers"].str.contains(",")].copy()
    single["layer"] = single["layers"].astype(int) if len(single) else []
    single["group"] = setting_labels(single.assign(layers=""))  # the setting without its layer
    curves = []
    for group, rows in single.sort_values("layer", kind="stable").groupby("group", sort=True):
        if rows["layer"].nunique() >= 2:
            rows = rows.drop_duplicates("layer")
            curves.append(
                {
                    "group": group,
                    "layers": rows["layer"].tolist(),
                    "auc": rows["roc_auc"].tolist(),
                    "low": _floats(rows["roc_auc_ci_low"]),
                    "high": _floats(rows["roc_auc_ci_high"]),
                }
            )
    return curves


def head_map(weights: pd.DataFrame, n_heads: int) -> dict:
    """The featured probe's per-head weights as a (layers used x heads) grid."""
    layers = sorted(weights["layer"].unique().tolist())
    grid = np.full((len(layers), n_heads), np.nan)
    grid[[layers.index(layer) for layer in weights["layer"]], weights["head"].to_numpy()] = weights["weight"]
    return {
        "layers": layers,
        "n_heads": n_heads,
        "weights": [[None if np.isnan(v) else float(v) for v in row] for row in grid],
    }


def class_profiles(project: Project, model: str, dataset: str, heads: pd.DataFrame) -> list[dict]:
    """Class means of the top heads' attention over PROFILE_BINS relative-position bins (length-masked) on
    the test split, from at most PROFILE_EXAMPLES_PER_CLASS examples of each class (a seeded sample); read
    one layer at a time, so memory is bounded by the sample and one layer."""
    view = open_view(project, dataset, TEST, model=model, dask=False)
    view = view.isel(example=_sample_per_class(view["label"].values, PROFILE_EXAMPLES_PER_CLASS))
    labels = view["label"].values
    profiles = {}
    for layer, rows in heads.groupby("layer", sort=False):
        attn = view["attn"].isel(layer=int(layer)).isel(head=rows["head"].to_numpy()).load()
        means = relative_bins(attn, PROFILE_BINS).groupby("label").mean("example")
        for row in rows.itertuples():
            profile = {
                "layer": int(row.layer),
                "head": int(row.head),
                "weight": float(row.weight),
                "bins": ((np.arange(PROFILE_BINS) + 0.5) / PROFILE_BINS).tolist(),
                "n_positive": int((labels == 1).sum()),
                "n_negative": int((labels == 0).sum()),
                "example_ids": view["example_id"].values.tolist(),
            }
            for name, label in (("positive", 1), ("negative", 0)):
                present = label in means["label"].values
                profile[name] = means.sel(label=label, head=row.head).values.astype(float).tolist() if present else None
            profiles[(row.layer, row.head)] = profile
    return [profiles[(row.layer, row.head)] for row in heads.itertuples()]


def length_histogram(examples: pd.DataFrame) -> dict:
    """Token counts per class over every built split, and how many prompts were truncated per split."""
    lo, hi = int(examples["seq_len"].min()), int(examples["seq_len"].max())
    edges = np.unique(np.linspace(lo, hi + 1, LENGTH_BINS + 1).round().astype(int))
    counts = {
        name: np.histogram(examples.loc[examples["label"] == label, "seq_len"], bins=edges)[0].tolist()
        for name, label in (("positive", 1), ("negative", 0))
    }
    truncated = examples.groupby("split")["truncated"].sum()
    return {
        "edges": edges.tolist(),
        **counts,
        "truncated": {k: int(v) for k, v in truncated.items()},
        "n_truncated": int(truncated.sum()),
    }


def example_lists(scores: pd.DataFrame, examples: pd.DataFrame) -> dict:
    """Test examples to open in the viewer: the highest scores, the most confidently wrong, a seeded random few."""
    frame = scores.merge(examples[["example_id", "label", "seq_len"]], on="example_id").sort_values("example_id")
    ids, labels = frame["example_id"].to_numpy(), frame["label"].to_numpy()
    score, lengths = frame["score"].to_numpy(), frame["seq_len"].to_numpy()
    wrongness = np.where(labels == 1, -score, score)
    orders = {
        "highest scores": np.argsort(-score, kind="stable"),
        "most confidently wrong": np.argsort(-wrongness, kind="stable"),
        "random": np.random.default_rng(SEED).permutation(len(frame)),
    }
    used: set[int] = set()
    lists = {}
    for name, order in orders.items():
        picked = [i for i in order[: len(used) + EXAMPLES_PER_LIST] if ids[i] not in used][:EXAMPLES_PER_LIST]
        used.update(int(ids[i]) for i in picked)
        lists[name] = [
            {"example_id": int(ids[i]), "label": int(labels[i]), "score": float(score[i]), "seq_len": int(lengths[i])}
            for i in picked
        ]
    return lists


def example_records(project: Project, data: ModelData, page: dict, decoder: TokenDecoder | None) -> list[dict]:
    """Per linked example: tokens (decoded with the stored tokenizer), label, the featured and baseline probes'
    scores, and every layer's and head's attention row as float16 decimals (the shortest that read back as the
    stored float16)."""
    example_ids = [row["example_id"] for rows in page["examples"].values() for row in rows]
    if not example_ids:
        return []
    shown = {page["featured"]["setting"]: page["featured"]["result_id"]}
    shown.update({r["setting"]: r["result_id"] for r in page["results"] if r["role"] == "baseline"})
    scores = data.scores[data.scores["example_id"].isin(example_ids)].set_index(["result_id", "example_id"])["score"]
    view = (
        open_view(project, page["dataset"], TEST, model=data.model, dask=False)
        .sel(example=example_ids)[["attn", "tokens"]]
        .load()
    )
    records = []
    for i, example_id in enumerate(example_ids):
        length = int(view["seq_len"].values[i])
        ids = view["tokens"].values[i, :length]
        attn = view["attn"].values[i, :, :, :length]
        records.append(
            {
                "model": data.model,
                "dataset": page["dataset"],
                "example_id": int(example_id),
                "label": int(view["label"].values[i]),
                "seq_len": length,
                "token_ids": ids.tolist(),
                "tokens": decoder.decode(ids) if decoder else [f"#{t}" for t in ids],
                "scores": [
                    {"setting": s, "result_id": r, "score": float(scores[(r, example_id)])}
                    for s, r in shown.items()
                    if (r, example_id) in scores.index
                ],
                "layers": view["layer"].values.tolist(),
                "n_heads": int(view.sizes["head"]),
                "attn": [
                    [_float16_values(attn[layer, head]) for head in range(attn.shape[1])]
                    for layer in range(attn.shape[0])
                ],
            }
        )
    return records


def token_decoder(project: Project, model: str) -> TokenDecoder | None:
    """The model's saved tokenizer, or None for a store built before tokenizers were saved (ids shown instead)."""
    folder = tokenizer_path(project.tokenizers_dir, model)
    return TokenDecoder(folder) if folder.is_dir() else None


def store_summary(project: Project, scope: Scope) -> list[dict]:
    """Per model: its identity and, per split of the datasets in scope, examples, tokens, truncation, bytes on
    disk and compression."""
    summary = []
    for model, datasets in scope.models.items():
        with catalog_reader(project) as con:
            splits = split_summaries(con, model, datasets)
            n_probes = count_results(con, model, datasets)
        rows, identity = [], {}
        for row in splits.itertuples():
            split_store = open_split_store(project.store, row.path, SplitRef(model, row.dataset, row.split))
            group = zarr.open_group(split_store, mode="r")
            identity = identity or dict(group.attrs.get("model", {}))
            logical = sum(int(np.prod(array.shape)) * array.dtype.itemsize for _, array in group.arrays())
            on_disk = len(split_store.root) + sum(size for size, _, _ in split_store.manifest.values())
            rows.append(
                {
                    "dataset": row.dataset,
                    "split": row.split,
                    "n_examples": int(row.n_examples),
                    "tokens": int(row.tokens),
                    "max_seq_len": int(row.max_seq_len),
                    "truncated": int(row.truncated),
                    "bytes_on_disk": on_disk,
                    "bytes_uncompressed": logical,
                    "compression_ratio": logical / on_disk if on_disk else None,
                    "built_at": str(row.built_at),
                    "build_seconds": None if pd.isna(row.build_seconds) else float(row.build_seconds),
                    "settings": json.loads(row.settings),
                }
            )
        totals = {
            key: sum(r[key] for r in rows)
            for key in ("n_examples", "tokens", "truncated", "bytes_on_disk", "bytes_uncompressed")
        }
        totals["compression_ratio"] = (
            totals["bytes_uncompressed"] / totals["bytes_on_disk"] if totals["bytes_on_disk"] else None
        )
        summary.append(
            {
                "model": model,
                "folder": model_dir_name(model),
                "identity": identity,
                "splits": rows,
                "totals": totals,
                "n_probe_results": n_probes,
            }
        )
    return summary


def _setting_cell(group: pd.DataFrame, length_auc: float | None) -> dict:
    """One setting of a dataset in the overview: its single result's cell, or the mean AUC of its seeds with their
    standard deviation `sd` and count `seeds` (no interval, not flagged)."""
    if len(group) == 1:
        return {**_cell(next(group.itertuples()), length_auc), "sd": 0.0, "seeds": 1}
    return {
        "result_id": group["result_id"].iloc[0],
        "auc": float(group["roc_auc"].mean()),
        "low": None,
        "high": None,
        "flagged": None,
        "sd": float(group["roc_auc"].std(ddof=1)),
        "seeds": len(group),
    }


def _cell(row, length_auc: float | None) -> dict:
    """One result as the report shows it; `flagged` when a probe setting does not beat the length-only
    control by more than its interval (its lower bound is at or below the control's AUC)."""
    low, high = _float(row.roc_auc_ci_low), _float(row.roc_auc_ci_high)
    flagged = None
    if row.role == "probe" and length_auc is not None and low is not None:
        flagged = bool(low <= length_auc)
    return {"result_id": row.result_id, "auc": float(row.roc_auc), "low": low, "high": high, "flagged": flagged}


def _length_auc(results: pd.DataFrame) -> float | None:
    """The dataset's length-only control AUC (the best one, if several seeds or probes were fitted)."""
    control = results.loc[results["role"] == "length", "roc_auc"]
    return float(control.max()) if len(control) else None


def _hard(results: pd.DataFrame, threshold: float) -> bool | None:
    """Whether the dataset is in the hard subset (a baseline below the threshold), None without a baseline."""
    baseline = results.loc[results["role"] == "baseline", "roc_auc"]
    return bool((baseline < threshold).any()) if len(baseline) else None


def _featured(results: pd.DataFrame, scored: set[str], weighted: set[str]):
    """The setting the page explains, among the results with stored test scores: the best attention probe with
    head weights, else the best attention probe, else the best probe of any feature but length."""
    results = results[results["result_id"].isin(scored) & (results["role"] != "control")]
    attn = results[results["feature"] == "attn"]
    for candidates in (attn[attn["result_id"].isin(weighted)], attn, results[results["role"] != "length"]):
        if len(candidates):
            return next(candidates.sort_values("roc_auc", ascending=False, kind="stable").itertuples())
    return None


def _sample_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Row positions of at most `per_class` rows of each label (seeded), in row order."""
    rng = np.random.default_rng(SEED)
    chosen = [
        rows if rows.size <= per_class else rng.choice(rows, per_class, replace=False)
        for rows in (np.flatnonzero(labels == label) for label in np.unique(labels))
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=int)


def _float16_values(values: np.ndarray) -> list[float]:
    """float16 values as the shortest decimals that read back as the same float16 (0.1, not 0.0999755859375)."""
    return [float(text) for text in np.asarray(values, dtype=np.float16).astype(str)]


def _float(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _floats(values: pd.Series) -> list[float | None]:
    return [_float(v) for v in values]
