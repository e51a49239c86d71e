"""The `featstore results` table: test ROC AUC, one row per dataset, one column per probe setting (one wide frame
for CSV and JSON; per-model text tables that fit the terminal). Settings come in a natural order (baseline,
controls, then by feature, layers numerically, aggregation); a setting fitted with several seeds shows their
mean AUC (± their standard deviation in text); the mean row averages the datasets every shown setting has."""

from __future__ import annotations

import fnmatch
import textwrap

import pandas as pd

from featstore.catalog.database import catalog_reader
from featstore.catalog.names import catalog_dataset_names, unknown_model
from featstore.catalog.probe_records import listed_results
from featstore.errors import FeatstoreError
from featstore.probing.specs import LENGTH_FEATURE, parse_layers_label, short_layers
from featstore.project import Project

COLUMN_GAP = 3  # spaces between the columns of a text table (setting labels hold single spaces)
HEADER_WIDTH = 14  # a setting's label wraps at this width, or its cells' width if wider
HEADER_LINES = 3  # labels needing more lines are numbered and spelled out under their table


def result_rows(project: Project, model: str | None = None, datasets: list[str] | None = None) -> pd.DataFrame:
    """The probe results `featstore results` shows, each with its setting label, in natural setting order. A model
    without results, an unknown dataset name or a dataset without results is a one-line error."""
    with catalog_reader(project) as con:
        frame = listed_results(con)
    if model is not None:
        if model not in set(frame["model"]):
            raise unknown_model(model, sorted(set(frame["model"])), "probe results")
        frame = frame[frame["model"] == model]
    if datasets:
        names = catalog_dataset_names(project).resolve_all(datasets)
        without = [name for name in names if name not in set(frame["dataset"])]
        if without:
            raise FeatstoreError(
                f"no probe results of {', '.join(without)}{f' for model {model!r}' if model else ''}; "
                f"run `featstore probe --model {model or '<model>'} --datasets {' '.join(without)}` first"
            )
        frame = frame[frame["dataset"].isin(names)]
    return natural_order(frame.assign(setting=setting_labels(frame)))


def matching_settings(rows: pd.DataFrame, pattern: str) -> pd.DataFrame:
    """The rows (of `result_rows`) whose setting label matches the glob `pattern` (`*bins*`); none is a one-line
    error naming the settings there are."""
    matched = rows["setting"].map(lambda label: fnmatch.fnmatchcase(label, pattern))
    if not matched.any():
        known = "; ".join(rows["setting"].unique())
        raise FeatstoreError(f"no setting matches {pattern!r}; the settings are: {known}")
    return rows[matched]


def natural_order(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` sorted by model, then setting: the baseline, the length control, then by feature, layers
    numerically, aggregation and probe, each setting's shuffled-label control right after it; then dataset, seed."""
    controls = frame["control"].fillna("") if "control" in frame else pd.Series("", index=frame.index)
    layers = frame["layers"].map(parse_layers_label)
    key = pd.DataFrame(
        {
            "model": frame["model"],
            "role": [
                0 if baseline else 1 if feature == LENGTH_FEATURE else 2
                for baseline, feature in zip(frame["baseline"], frame["feature"], strict=False)
            ],
            "feature": frame["feature"],
            "first": layers.map(lambda x: x[0] if x else -1),
            "count": layers.map(len),
            "layers": layers,
            "aggregation": frame["aggregation"],
            "probe": frame["probe"],
            "control": controls,
            "dataset": frame["dataset"],
            "seed": frame["seed"],
        },
        index=frame.index,
    )
    return frame.loc[key.sort_values(list(key.columns), kind="stable").index]


def by_mean_auc(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with each model's settings ordered by their mean AUC over datasets and seeds, best first."""
    mean = rows.groupby(["model", "setting"])["roc_auc"].transform("mean")
    return rows.assign(_mean=-mean).sort_values(["model", "_mean"], kind="stable").drop(columns="_mean")


def results_table(rows: pd.DataFrame, ci: bool = False) -> pd.DataFrame:
    """Dataset x (model setting) test AUC of `result_rows` (the mean over seeds), rounded to 3 places, with a mean
    row over the datasets every column has (`mean (n=K)`); with `ci`, each cell is `AUC [low, high]`, the stored
    95 % DeLong interval of a single-seed result, `AUC ±sd` over several seeds (the mean row stays a number)."""
    if rows.empty:
        return pd.DataFrame()
    frame = seed_means(rows.assign(setting=rows["model"] + " " + rows["setting"]))
    columns = list(dict.fromkeys(frame["setting"]))
    table = frame.pivot(index="dataset", columns="setting", values="roc_auc").reindex(columns=columns)
    means, common = equal_n_means(table)
    n = len(common)
    if ci:
        frame["cell"] = _cells(frame, ci)
        table = frame.pivot(index="dataset", columns="setting", values="cell").reindex(columns=columns).fillna("")
    else:
        table = table.round(3)
    table.loc[f"mean (n={n})"] = means.round(3)
    return table.reset_index().rename_axis(columns=None)


def seed_means(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, dataset, setting), in the order of `rows`: the mean of its seeds' AUC and interval
    bounds, `auc_sd` (their standard deviation, 0 for one seed), `seeds` and n_test."""
    grouped = rows.groupby(["model", "dataset", "setting"], sort=False)
    return grouped.agg(
        roc_auc=("roc_auc", "mean"),
        roc_auc_ci_low=("roc_auc_ci_low", "mean"),
        roc_auc_ci_high=("roc_auc_ci_high", "mean"),
        n_test=("n_test", "max"),
        auc_sd=("roc_auc", lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0),
        seeds=("roc_auc", "size"),
    ).reset_index()


def equal_n_means(table: pd.DataFrame) -> tuple[pd.Series, pd.Index]:
    """Each column's mean over the rows (datasets) that have every column, and those rows: a mean row whose
    columns average the same datasets."""
    complete = table.dropna()
    return complete.mean(), complete.index


def results_text(rows: pd.DataFrame, ci: bool = False, width: int = 120) -> str:
    """`result_rows` as text no wider than `width`: per model a heading and dataset x setting tables of test AUC
    (`AUC [low, high]` with `ci`) with each dataset's n_test, split into several tables when the settings do not
    fit side by side."""
    if rows.empty:
        return "(no rows)"
    parts = []
    for model, of_model in rows.groupby("model", sort=True):
        of_model = seed_means(of_model)
        columns = list(dict.fromkeys(of_model["setting"]))
        cells = of_model.assign(cell=_cells(of_model, ci)).pivot(index="dataset", columns="setting", values="cell")
        cells = cells.reindex(columns=columns)
        means, common = equal_n_means(of_model.pivot(index="dataset", columns="setting", values="roc_auc"))
        n = len(common)
        n_test = of_model.groupby("dataset")["n_test"].agg(
            lambda n: f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
        )
        rows_shown = [[dataset, n_test[dataset], *cells.loc[dataset].fillna("-")] for dataset in cells.index]
        rows_shown.append([f"mean (n={n})", "", *(f"{means[setting]:.3f}" if n else "-" for setting in cells.columns)])
        interval = " [95% CI]" if ci else ""
        heading = f"{model}: test ROC AUC{interval} by dataset and setting ({len(cells.columns)} settings)"
        tables = text_tables(["dataset", "n_test", *cells.columns], rows_shown, fixed=2, width=width)
        parts.append(heading + "\n" + "\n\n".join(tables))
    return "\n\n".join(parts)


def text_tables(header: list[str], rows: list[list[str]], fixed: int, width: int) -> list[str]:
    """Text tables of `rows` under `header`, the first `fixed` columns repeated in each and the others shared out so
    no line is wider than `width` (unless one column alone is); the first column is left-aligned, the others right.
    Headers wrap onto up to HEADER_LINES lines; a longer one is numbered and spelled out under its table."""
    columns = [[str(row[i]) for row in rows] for i in range(len(header))]
    titles = [_wrapped(title, max(map(len, cells), default=0)) for title, cells in zip(header, columns, strict=False)]
    note_width = len(f"[{len(header)}]")  # a numbered header is at most this wide
    widths = [
        max(note_width * (title is None), *map(len, [*(title or []), *cells]))
        for title, cells in zip(titles, columns, strict=False)
    ]
    return [
        _render(header, titles, columns, widths, [*range(fixed), *chunk], width)
        for chunk in _share_out(widths, fixed, width)
    ]


def _share_out(widths: list[int], fixed: int, width: int) -> list[list[int]]:
    """The columns after the first `fixed`, in order, cut into runs that fit beside the fixed ones in `width`."""
    base = sum(widths[:fixed]) + COLUMN_GAP * (fixed - 1)
    chunks: list[list[int]] = [[]]
    used = base
    for i in range(fixed, len(widths)):
        if chunks[-1] and used + COLUMN_GAP + widths[i] > width:
            chunks.append([])
            used = base
        chunks[-1].append(i)
        used += COLUMN_GAP + widths[i]
    return chunks


def _render(
    header: list[str],
    titles: list[list[str] | None],
    columns: list[list[str]],
    widths: list[int],
    shown: list[int],
    width: int,
) -> str:
    """One text table of the `shown` columns, with the notes spelling out its numbered headers."""
    notes = {i: f"[{n}]" for n, i in enumerate((i for i in shown if titles[i] is None), start=1)}
    heads = [titles[i] or [notes[i]] for i in shown]
    height = max(map(len, heads))
    gap = " " * COLUMN_GAP

    def line(cells: list[str]) -> str:
        return gap.join(
            cell.ljust(widths[i]) if k == 0 else cell.rjust(widths[i])
            for k, (i, cell) in enumerate(zip(shown, cells, strict=False))
        ).rstrip()

    text = [line([([""] * (height - len(head)) + head)[level] for head in heads]) for level in range(height)]
    text += [line([columns[i][r] for i in shown]) for r in range(len(columns[0]))]
    text += [
        wrapped
        for i, note in notes.items()
        for wrapped in textwrap.wrap(f"{note} {header[i]}", width, subsequent_indent="    ")
    ]
    return "\n".join(text)


def _wrapped(title: str, cell_width: int) -> list[str] | None:
    """A column title as the lines of its header, at most as wide as its cells or HEADER_WIDTH; None when it needs
    more than HEADER_LINES lines."""
    lines = textwrap.wrap(title, max(cell_width, HEADER_WIDTH), break_long_words=False, break_on_hyphens=False) or [""]
    return lines if len(lines) <= HEADER_LINES else None


def _cells(rows: pd.DataFrame, ci: bool) -> list[str]:
    """Each setting's AUC to 3 places (the mean over seeds), with `±sd` over several seeds, else with its interval
    when `ci`."""
    return [
        f"{auc:.3f} ±{sd:.3f}" if seeds > 1 else _with_interval(auc, low, high) if ci else f"{auc:.3f}"
        for auc, low, high, sd, seeds in rows[
            ["roc_auc", "roc_auc_ci_low", "roc_auc_ci_high", "auc_sd", "seeds"]
        ].itertuples(index=False)
    ]


def setting_labels(frame: pd.DataFrame) -> pd.Series:
    """One label per setting of a model: `probe feature layers aggregation`, layers shortened (`L0-23`), with
    ` [baseline]` for baselines and ` [shuffled-labels]` for a control, so two settings never share a label;
    the seeds of a setting share its label."""
    return pd.Series(
        [
            " ".join(
                part
                for part in (row.probe, row.feature, short_layers(parse_layers_label(row.layers)), row.aggregation)
                if part
            )
            + (" [baseline]" if row.baseline else "")
            + (f" [{row.control}]" if getattr(row, "control", "") else "")
            for row in frame.itertuples()
        ],
        index=frame.index,
        dtype=str,
    )


def _with_interval(auc: float, low: float, high: float) -> str:
    """`0.812 [0.781, 0.843]`; results fitted before intervals were stored show the AUC alone."""
    return f"{auc:.3f}" if pd.isna(low) else f"{auc:.3f} [{low:.3f}, {high:.3f}]"
