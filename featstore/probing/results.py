"""The `featstore results` table: test ROC AUC, one row per dataset, one column per probe setting."""

from __future__ import annotations

import pandas as pd

from featstore.api import Store


def results_table(store: Store, model: str | None = None, datasets: list[str] | None = None) -> pd.DataFrame:
    """Dataset x (model, probe, feature, layers, aggregation) test AUC, rounded to 3 places, with a mean row."""
    frame = store.sql(
        "SELECT dataset, model, probe, feature, layers, aggregation, roc_auc FROM probe_results "
        "WHERE ($model IS NULL OR model = $model) ORDER BY dataset",
        {"model": model},
    )
    if datasets:
        frame = frame[frame["dataset"].isin(datasets)]
    if frame.empty:
        return frame
    frame["layers"] = frame["layers"].map(_short_layers)
    frame["setting"] = frame[["model", "probe", "feature", "layers", "aggregation"]].agg(" ".join, axis=1)
    table = frame.pivot_table(index="dataset", columns="setting", values="roc_auc", aggfunc="first")
    table.loc["mean"] = table.mean()
    return table.round(3).reset_index().rename_axis(columns=None)


def _short_layers(layers: str) -> str:
    """`L0-23` for a contiguous run, `L5` for one layer, else the list."""
    numbers = [int(x) for x in layers.split(",")]
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"L{numbers[0]}-{numbers[-1]}"
    return "L" + ",".join(map(str, numbers))
