"""The `featstore results` table: test ROC AUC, one row per dataset, one column per probe setting (one wide frame
for CSV and JSON; per-model text tables that fit the terminal)."""

from __future__ import annotations

import textwrap

import pandas as pd

from featstore.api import Store
from featstore.catalog.names import catalog_dataset_names, unknown_model
from featstore.errors import FeatstoreError

COLUMN_GAP = 3  # spaces between the columns of a text table (setting labels hold single spaces)
HEADER_WIDTH = 14  # a setting's label wraps at this width, or its cells' width if wider
HEADER_LINES = 3  # labels needing more lines are numbered and spelled out under their table


def result_rows(store: Store, model: str | None = None, datasets: list[str] | None = None) -> pd.DataFrame:
    """The probe results `featstore results` shows, each with its setting label; a model without results, an
    unknown dataset name or a dataset without results is a one-line error."""
    frame = store.sql("SELECT dataset, model, probe, feature, layers, aggregation, seed, baseline, roc_auc, "
                      "roc_auc_ci_low, roc_auc_ci_high, n_test FROM probe_results ORDER BY dataset, model")
    if model is not None:
        if model not in set(frame["model"]):
            raise unknown_model(model, sorted(set(frame["model"])), "probe results")
        frame = frame[frame["model"] == model]
    if datasets:
        names = catalog_dataset_names(store.project, store.reader).resolve_all(datasets)
        without = [name for name in names if name not in set(frame["dataset"])]
        if without:
            raise FeatstoreError(f"no probe results of {', '.join(without)}{f' for model {model!r}' if model else ''}; "
                                 f"run `featstore probe --model {model or '<model>'} --datasets {' '.join(without)}` first")
        frame = frame[frame["dataset"].isin(names)]
    return frame.assign(setting=setting_labels(frame))


def results_table(rows: pd.DataFrame, ci: bool = False) -> pd.DataFrame:
    """Dataset x (model setting) test AUC of `result_rows`, rounded to 3 places, with a mean row; with `ci`,
    each cell is `AUC [low, high]`, the stored 95 % DeLong interval (the mean row stays a number)."""
    if rows.empty:
        return pd.DataFrame()
    frame = rows.assign(setting=rows["model"] + " " + rows["setting"])
    table = frame.pivot(index="dataset", columns="setting", values="roc_auc")
    means = table.mean().round(3)
    if ci:
        frame["cell"] = _cells(frame, ci)
        table = frame.pivot(index="dataset", columns="setting", values="cell").reindex(columns=table.columns).fillna("")
    else:
        table = table.round(3)
    table.loc["mean"] = means
    return table.reset_index().rename_axis(columns=None)


def results_text(rows: pd.DataFrame, ci: bool = False, width: int = 120) -> str:
    """`result_rows` as text no wider than `width`: per model a heading and dataset x setting tables of test AUC
    (`AUC [low, high]` with `ci`) with each dataset's n_test, split into several tables when the settings do not
    fit side by side."""
    if rows.empty:
        return "(no rows)"
    parts = []
    for model, of_model in rows.groupby("model", sort=True):
        cells = of_model.assign(cell=_cells(of_model, ci)).pivot(index="dataset", columns="setting", values="cell")
        means = of_model.pivot(index="dataset", columns="setting", values="roc_auc").mean()
        n_test = of_model.groupby("dataset")["n_test"].agg(lambda n: f"{n.min()}" if n.min() == n.max()
                                                            else f"{n.min()}-{n.max()}")
        rows_shown = [[dataset, n_test[dataset], *cells.loc[dataset].fillna("-")] for dataset in cells.index]
        rows_shown.append(["mean", "", *(f"{means[setting]:.3f}" for setting in cells.columns)])
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
    titles = [_wrapped(title, max(map(len, cells), default=0)) for title, cells in zip(header, columns)]
    note_width = len(f"[{len(header)}]")  # a numbered header is at most this wide
    widths = [max(note_width * (title is None), *map(len, [*(title or []), *cells])) for title, cells in zip(titles, columns)]
    return [_render(header, titles, columns, widths, [*range(fixed), *chunk], width)
            for chunk in _share_out(widths, fixed, width)]


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


def _render(header: list[str], titles: list[list[str] | None], columns: list[list[str]], widths: list[int],
            shown: list[int], width: int) -> str:
    """One text table of the `shown` columns, with the notes spelling out its numbered headers."""
    notes = {i: f"[{n}]" for n, i in enumerate((i for i in shown if titles[i] is None), start=1)}
    heads = [titles[i] or [notes[i]] for i in shown]
    height = max(map(len, heads))
    gap = " " * COLUMN_GAP

    def line(cells: list[str]) -> str:
        return gap.join(cell.ljust(widths[i]) if k == 0 else cell.rjust(widths[i])
                        for k, (i, cell) in enumerate(zip(shown, cells))).rstrip()

    text = [line([([""] * (height - len(head)) + head)[level] for head in heads]) for level in range(height)]
    text += [line([columns[i][r] for i in shown]) for r in range(len(columns[0]))]
    text += [wrapped for i, note in notes.items()
             for wrapped in textwrap.wrap(f"{note} {header[i]}", width, subsequent_indent="    ")]
    return "\n".join(text)


def _wrapped(title: str, cell_width: int) -> list[str] | None:
    """A column title as the lines of its header, at most as wide as its cells or HEADER_WIDTH; None when it needs
    more than HEADER_LINES lines."""
    lines = textwrap.wrap(title, max(cell_width, HEADER_WIDTH), break_long_words=False, break_on_hyphens=False) or [""]
    return lines if len(lines) <= HEADER_LINES else None


def _cells(rows: pd.DataFrame, ci: bool) -> list[str]:
    """Each result's AUC to 3 places, with its interval when `ci`."""
    return [_with_interval(*values) if ci else f"{values[0]:.3f}"
            for values in rows[["roc_auc", "roc_auc_ci_low", "roc_auc_ci_high"]].itertuples(index=False)]


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
