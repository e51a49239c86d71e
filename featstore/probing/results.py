"""The `featstore results` table: test ROC AUC, one row per dataset, one column per probe setting."""

from __future__ import annotations

import pandas as pd

from featstore.api import Store

def results_table(store: Store, model: str | None = None, datasets: list[str] | None = None,
                  ci: bool = False) -> pd.DataFrame:
    """Dataset x (model, probe, feature, layers, aggregation) test AUC, rounded to 3 places, with a mean row;
    with `ci`, each cell is `AUC [low, high]`, the stored 95 % DeLong interval (the mean row stays a number)."""
    frame = store.sql(
        "SELECT dataset, model, probe, feature, layers, aggregation, seed, baseline, roc_auc, roc_auc_ci_low, "
        "roc_auc_ci_high FROM probe_results WHERE ($model IS NULL OR model = $model) ORDER BY dataset",
        {"model": model},
    )
    if datasets:
        frame = frame[frame["dataset"].isin(datasets)]
    if frame.empty:
        return frame
    frame["setting"] = frame["model"] + " " + setting_labels(frame)
    table = frame.pivot(index="dataset", columns="setting", values="roc_auc")
    means = table.mean().round(3)
    if ci:
        frame["cell"] = [_with_interval(*values) for values in
                         frame[["roc_auc", "roc_auc_ci_low", "roc_auc_ci_high"]].itertuples(index=False)]
        table = frame.pivot(index="dataset", columns="setting", values="cell").reindex(columns=table.columns).fillna("")
    else:
        table = table.round(3)
    table.loc["mean"] = means
    return table.reset_index().rename_axis(columns=None)


def setting_labels(frame: pd.DataFrame) -> pd.Series:
    """One label per setting of a model: `probe feature layers aggregation`, layers shortened (`L0-23`), with
    ` seed N` for seeds other than 0 and ` [baseline]` for baselines, so two settings never share a label."""
    return pd.Series([
        " ".join(part for part in (row.probe, row.feature, short_layers(row.layers), row.aggregation) if part)
        + (f" seed {row.seed}" if row.seed else "") + (" [baseline]" if row.baseline else "")
        for row in frame.itertuples()
    ], index=frame.index, dtype=str)


def short_layers(layers: str) -> str:
    """`L0-23` for a contiguous run, `L5` for one layer, else the list; empty for no layers (length control)."""
    if not layers:
        return ""
    numbers = [int(x) for x in layers.split(",")]
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"L{numbers[0]}-{numbers[-1]}"
    return "L" + ",".join(map(str, numbers))


def parse_short_layers(label: str) -> tuple[int, ...]:
    """The layers of a `short_layers` label: `L0-23`, `L5`, `L1,3`."""
    numbers = label.removeprefix("L")
    if "-" in numbers:
        first, last = numbers.split("-")
        return tuple(range(int(first), int(last) + 1))
    return tuple(int(n) for n in numbers.split(","))


def _with_interval(auc: float, low: float, high: float) -> str:
    """`0.812 [0.781, 0.843]`; results fitted before intervals were stored show the AUC alone."""
    return f"{auc:.3f}" if pd.isna(low) else f"{auc:.3f} [{low:.3f}, {high:.3f}]"
