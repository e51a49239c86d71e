"""Paired comparisons of probe settings from their stored test scores: per dataset, ΔAUC against a reference
setting with its paired DeLong interval and p-value, Holm-adjusted across the datasets of each comparison;
across datasets, the mean ΔAUC over the datasets both settings were fitted on, with a seeded bootstrap
interval and the count of datasets significantly better, not different and worse.

A setting fitted with several seeds is compared through its seed-averaged test scores (the mean of the seeds'
decision scores per example); its per-seed AUCs give the mean and spread the tables show beside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from featstore.catalog.database import catalog_reader
from featstore.catalog.probe_records import labelled_scores
from featstore.errors import FeatstoreError
from featstore.probing.results import seed_means, text_tables
from featstore.probing.specs import HARD_THRESHOLD, LENGTH_FEATURE
from featstore.project import Project
from probes.metrics import CI_LEVEL, bootstrap_mean_interval, holm, paired_auc_difference

BASELINE = "baseline"
LENGTH = "length"
ALPHA = 1 - CI_LEVEL
SETTING_KEY = ["model", "dataset", "setting"]


def seed_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """`seed_means` of `result_rows` (AUC as `auc`) with each setting's result ids."""
    ids = rows.groupby(SETTING_KEY, sort=False)["result_id"].agg(list).rename("result_ids")
    return seed_means(rows).rename(columns={"roc_auc": "auc"}).join(ids, on=SETTING_KEY)


def reference_setting(rows: pd.DataFrame, reference: str) -> pd.Series:
    """Which rows are the reference: `baseline` (the SAE-Probes baseline), `length` (the length-only control) or a
    setting label as `featstore results` prints it (without the model); anything else is a one-line error."""
    plain = rows["control"].fillna("") == ""
    if reference == BASELINE:
        chosen = rows["baseline"].astype(bool) & plain
    elif reference == LENGTH:
        chosen = (rows["feature"] == LENGTH_FEATURE) & plain
    else:
        chosen = rows["setting"] == reference
    if not chosen.any():
        known = ", ".join(sorted(set(rows["setting"])))
        raise FeatstoreError(f"no results of the reference {reference!r}; use baseline, length or one of: {known}")
    if rows[chosen].groupby(["model", "dataset"])["setting"].nunique().max() > 1:
        raise FeatstoreError(f"the reference {reference!r} matches several settings per dataset; name one setting")
    return chosen


def paired_comparisons(project: Project, rows: pd.DataFrame, reference: str = BASELINE) -> pd.DataFrame:
    """Per (model, dataset, setting) of `result_rows` other than the reference: its mean AUC over seeds and their
    spread, the reference's AUC, and delta_auc, delta_ci_low, delta_ci_high, p_value of the paired DeLong test on
    the seed-averaged test scores of the shared test examples, p_holm across the datasets of each (model,
    setting), and n_test (the shared examples)."""
    chosen = reference_setting(rows, reference)
    summary = seed_summary(rows)
    references = seed_summary(rows[chosen]).set_index(["model", "dataset"])
    scores = _averaged_scores(project, summary)
    records = []
    for item in summary.itertuples(index=False):
        if (item.model, item.dataset) not in references.index:
            continue
        ref = references.loc[(item.model, item.dataset)]
        if ref["setting"] == item.setting:
            continue
        a, b = scores[(item.model, item.dataset, item.setting)], scores[(item.model, item.dataset, ref["setting"])]
        shared = a.join(b, how="inner", lsuffix="_a", rsuffix="_b")
        test = paired_auc_difference(
            shared["label_a"].to_numpy(), shared["score_a"].to_numpy(), shared["score_b"].to_numpy()
        )
        records.append(
            {
                "model": item.model,
                "dataset": item.dataset,
                "setting": item.setting,
                "auc": item.auc,
                "auc_sd": item.auc_sd,
                "seeds": item.seeds,
                "reference": ref["setting"],
                "reference_auc": ref["auc"],
                "delta_auc": test.delta,
                "delta_ci_low": test.ci_low,
                "delta_ci_high": test.ci_high,
                "p_value": test.p_value,
                "n_test": test.n,
            }
        )
    frame = pd.DataFrame(
        records,
        columns=[
            "model",
            "dataset",
            "setting",
            "auc",
            "auc_sd",
            "seeds",
            "reference",
            "reference_auc",
            "delta_auc",
            "delta_ci_low",
            "delta_ci_high",
            "p_value",
            "n_test",
        ],
    )
    frame["p_holm"] = frame.groupby(["model", "setting"])["p_value"].transform(lambda p: holm(p.to_numpy()))
    frame["verdict"] = verdicts(frame)
    return frame


def verdicts(comparisons: pd.DataFrame) -> pd.Series:
    """`better`, `worse` (Holm-adjusted p below ALPHA, by the sign of ΔAUC) or `same` (not different)."""
    significant = comparisons["p_holm"] < ALPHA
    return pd.Series(
        np.select(
            [significant & (comparisons["delta_auc"] > 0), significant & (comparisons["delta_auc"] < 0)],
            ["better", "worse"],
            "same",
        ),
        index=comparisons.index,
        dtype=object,
    )


def across_datasets(comparisons: pd.DataFrame, hard: set[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """Per (model, setting): over the datasets compared with the reference (`hard`: only those), n_datasets, the
    mean ΔAUC with its 95 % bootstrap interval over datasets (seeded), and how many datasets are better, the same
    and worse after Holm."""
    if hard is not None:
        comparisons = comparisons[comparisons["dataset"].isin(hard)]
    records = []
    for (model, setting), group in comparisons.groupby(["model", "setting"], sort=False):
        low, high = bootstrap_mean_interval(group["delta_auc"].to_numpy(), seed=seed)
        counts = group["verdict"].value_counts()
        records.append(
            {
                "model": model,
                "setting": setting,
                "n_datasets": len(group),
                "mean_delta_auc": float(group["delta_auc"].mean()),
                "mean_ci_low": low,
                "mean_ci_high": high,
                "better": int(counts.get("better", 0)),
                "same": int(counts.get("same", 0)),
                "worse": int(counts.get("worse", 0)),
            }
        )
    return pd.DataFrame(
        records,
        columns=[
            "model",
            "setting",
            "n_datasets",
            "mean_delta_auc",
            "mean_ci_low",
            "mean_ci_high",
            "better",
            "same",
            "worse",
        ],
    )


def hard_datasets(comparisons: pd.DataFrame, threshold: float = HARD_THRESHOLD) -> set[str]:
    """The datasets whose reference AUC is below `threshold` (with the baseline as reference: the hard subset)."""
    return set(comparisons.loc[comparisons["reference_auc"] < threshold, "dataset"])


def _averaged_scores(project: Project, summary: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """Per (model, dataset, setting): its test examples' labels and seed-averaged decision scores, by example id."""
    ids = [rid for group in summary["result_ids"] for rid in group]
    with catalog_reader(project) as con:
        stored = labelled_scores(con, ids)
    by_result = dict(tuple(stored.groupby("result_id")))
    averaged = {}
    for item in summary.itertuples(index=False):
        missing = [rid for rid in item.result_ids if rid not in by_result]
        if missing:
            raise FeatstoreError(
                f"{item.dataset} ({item.setting}): no stored test scores; refit it with "
                "`featstore probe ... --overwrite-eval`"
            )
        frames = pd.concat([by_result[rid] for rid in item.result_ids])
        averaged[(item.model, item.dataset, item.setting)] = frames.groupby("example_id").agg(
            score=("score", "mean"), label=("label", "first")
        )
    return averaged


def comparisons_text(comparisons: pd.DataFrame, width: int = 120) -> str:
    """Per model: a dataset x setting table of ΔAUC against the reference (`*` where significant after Holm), then
    per setting the mean ΔAUC over the compared datasets with its interval and better/same/worse counts, on all
    datasets and on the hard ones (reference AUC below HARD_THRESHOLD)."""
    if comparisons.empty:
        return "(no settings to compare)"
    parts = []
    for model, of_model in comparisons.groupby("model", sort=False):
        settings = list(dict.fromkeys(of_model["setting"]))
        marked = of_model.assign(
            cell=[
                f"{delta:+.3f}{'*' if p < ALPHA else ' '}"
                for delta, p in zip(of_model["delta_auc"], of_model["p_holm"], strict=False)
            ]
        )
        cells = marked.pivot(index="dataset", columns="setting", values="cell").reindex(columns=settings)
        reference = of_model.groupby("dataset")["reference_auc"].first()
        shown = [[dataset, f"{reference[dataset]:.3f}", *cells.loc[dataset].fillna("-")] for dataset in cells.index]
        reference_name = of_model["reference"].iloc[0]
        heading = (
            f"{model}: test ΔAUC vs {reference_name} (paired DeLong; * = Holm-adjusted p < {ALPHA:.2f} across datasets)"
        )
        tables = text_tables(["dataset", "reference AUC", *settings], shown, fixed=2, width=width)
        summary_parts = []
        for title, hard in (
            ("all datasets", None),
            (f"hard datasets (reference AUC < {HARD_THRESHOLD})", hard_datasets(of_model)),
        ):
            summary = across_datasets(of_model, hard)
            lines = [
                [
                    row.setting,
                    str(row.n_datasets),
                    f"{row.mean_delta_auc:+.3f} [{row.mean_ci_low:+.3f}, {row.mean_ci_high:+.3f}]",
                    f"{row.better}/{row.same}/{row.worse}",
                ]
                for row in summary.itertuples()
            ]
            if lines:
                summary_parts.append(
                    f"mean ΔAUC over {title}, 95% bootstrap interval over datasets\n"
                    + "\n".join(
                        text_tables(
                            ["setting", "n", "mean ΔAUC [95% CI]", "better/same/worse"],
                            lines,
                            fixed=4,
                            width=max(width, 200),
                        )
                    )
                )
        parts.append("\n\n".join([heading + "\n" + "\n\n".join(tables), *summary_parts]))
    return "\n\n".join(parts)
