"""Charts of the report as inline SVG strings: drawn here, so the site needs no plotting library or CDN.

Every mark carries a `<title>` with its exact numbers (the browser shows it on hover), and every chart
is an `<svg class="chart">` whose marks tests can count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from markupsafe import Markup, escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
CLASS_COLOURS = {"positive": "#e66101", "negative": "#5e3c99"}


@dataclass
class Series:
    """One line of a line chart: points, an optional band (low, high per point), a name and a colour."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    colour: str
    band: tuple[Sequence[float], Sequence[float]] | None = None
    dashed: bool = False
    markers: bool = False


@dataclass
class Frame:
    """A plot area with linear axes: maps data to pixels and draws ticks and labels."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    width: int = 560
    height: int = 320
    margin: tuple[int, int, int, int] = (16, 16, 44, 56)  # top, right, bottom, left
    parts: list[str] = field(default_factory=list)

    def px(self, x: float) -> float:
        top, right, bottom, left = self.margin
        lo, hi = self.x_range
        return left + (x - lo) / ((hi - lo) or 1) * (self.width - left - right)

    def py(self, y: float) -> float:
        top, right, bottom, left = self.margin
        lo, hi = self.y_range
        return self.height - bottom - (y - lo) / ((hi - lo) or 1) * (self.height - top - bottom)

    def axes(
        self,
        x_label: str,
        y_label: str,
        x_ticks: Sequence[float],
        y_ticks: Sequence[float],
        x_format: str = "{:g}",
        y_format: str = "{:g}",
    ) -> None:
        top, right, bottom, left = self.margin
        y0, x0 = self.height - bottom, left
        self.parts.append(f'<line class="axis" x1="{x0}" y1="{y0}" x2="{self.width - right}" y2="{y0}"/>')
        self.parts.append(f'<line class="axis" x1="{x0}" y1="{top}" x2="{x0}" y2="{y0}"/>')
        for tick in x_ticks:
            x = self.px(tick)
            self.parts.append(
                f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{y0}"/>'
                f'<text class="tick" x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">'
                f"{escape(x_format.format(tick))}</text>"
            )
        for tick in y_ticks:
            y = self.py(tick)
            self.parts.append(
                f'<line class="grid" x1="{x0}" y1="{y:.1f}" x2="{self.width - right}" y2="{y:.1f}"/>'
                f'<text class="tick" x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">'
                f"{escape(y_format.format(tick))}</text>"
            )
        self.parts.append(
            f'<text class="label" x="{(x0 + self.width - right) / 2:.1f}" y="{self.height - 6}" '
            f'text-anchor="middle">{escape(x_label)}</text>'
        )
        self.parts.append(
            f'<text class="label" transform="translate(14 {(top + y0) / 2:.1f}) rotate(-90)" '
            f'text-anchor="middle">{escape(y_label)}</text>'
        )

    def svg(self, title: str, legend: Sequence[tuple[str, str, bool]] = ()) -> Markup:
        """The finished chart; `legend` rows are (name, colour, dashed), drawn below the plot."""
        rows = len(legend)
        height = self.height + 18 * rows
        for i, (name, colour, dashed) in enumerate(legend):
            y = self.height + 10 + 18 * i
            dash = ' stroke-dasharray="5 3"' if dashed else ""
            self.parts.append(
                f'<line x1="{self.margin[3]}" y1="{y}" x2="{self.margin[3] + 24}" y2="{y}" '
                f'stroke="{colour}" stroke-width="2.5"{dash}/><text class="legend" '
                f'x="{self.margin[3] + 30}" y="{y + 4}">{escape(name)}</text>'
            )
        return Markup(
            f'<svg class="chart" role="img" viewBox="0 0 {self.width} {height}" width="{self.width}" '
            f'height="{height}"><title>{escape(title)}</title>{"".join(self.parts)}</svg>'
        )


def line_chart(
    series: Sequence[Series],
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    x_ticks: Sequence[float],
    y_ticks: Sequence[float],
    diagonal: bool = False,
    hlines: Sequence[tuple[str, float, str]] = (),
    point_format: str = "{x:g}: {y:.3f}",
) -> Markup:
    """Lines (with optional bands and markers) over shared axes; `hlines` are (name, y, colour) references."""
    frame = Frame(x_range, y_range)
    frame.axes(x_label, y_label, x_ticks, y_ticks)
    if diagonal:
        frame.parts.append(
            f'<line class="reference" x1="{frame.px(x_range[0]):.1f}" y1="{frame.py(y_range[0]):.1f}" '
            f'x2="{frame.px(x_range[1]):.1f}" y2="{frame.py(y_range[1]):.1f}"/>'
        )
    for name, value, colour in hlines:
        y = frame.py(value)
        frame.parts.append(
            f'<line class="hline" x1="{frame.px(x_range[0]):.1f}" y1="{y:.1f}" '
            f'x2="{frame.px(x_range[1]):.1f}" y2="{y:.1f}" stroke="{colour}">'
            f"<title>{escape(name)}: {value:.3f}</title></line>"
        )
    for line in series:
        if line.band is not None:
            upper = [f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in zip(line.x, line.band[1], strict=False)]
            lower = [f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in zip(line.x, line.band[0], strict=False)]
            frame.parts.append(f'<polygon class="band" fill="{line.colour}" points="{" ".join(upper + lower[::-1])}"/>')
        points = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in zip(line.x, line.y, strict=False))
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        frame.parts.append(
            f'<polyline class="series" fill="none" stroke="{line.colour}" stroke-width="2"{dash} '
            f'points="{points}"><title>{escape(line.name)}</title></polyline>'
        )
        if line.markers:
            for x, y in zip(line.x, line.y, strict=False):
                frame.parts.append(
                    f'<circle class="point" cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="3.5" '
                    f'fill="{line.colour}"><title>{escape(line.name)} '
                    f"{escape(point_format.format(x=x, y=y))}</title></circle>"
                )
    legend = [(line.name, line.colour, line.dashed) for line in series] + [(n, c, True) for n, _, c in hlines]
    return frame.svg(title, legend)


def forest_plot(rows: Sequence[dict], title: str, references: Sequence[tuple[str, float, str]] = ()) -> Markup:
    """One row per setting: its AUC as a dot and its 95 % interval as a whisker, with reference lines."""
    values = [v for row in rows for v in (row["low"], row["high"], row["auc"]) if v is not None]
    values += [value for _, value, _ in references]
    lo = min(0.5, np.floor(min(values, default=0.5) * 10) / 10)
    label_width, row_height = 300, 22
    frame = Frame(
        (lo, 1.0), (0, 1), width=760, height=40 + row_height * len(rows) + 20, margin=(10, 20, 40, label_width)
    )
    ticks = np.round(np.arange(lo, 1.0001, 0.1), 2)
    frame.axes("test ROC AUC (95 % DeLong interval)", "", ticks, [])
    for name, value, colour in references:
        x = frame.px(value)
        frame.parts.append(
            f'<line class="hline" x1="{x:.1f}" y1="10" x2="{x:.1f}" y2="{frame.height - 40}" '
            f'stroke="{colour}"><title>{escape(name)}: {value:.3f}</title></line>'
        )
    for i, row in enumerate(rows):
        y = 10 + row_height * (i + 0.8)
        text = f"{row['label']}: {row['auc']:.3f}"
        if row["low"] is not None:
            text += f" [{row['low']:.3f}, {row['high']:.3f}]"
            frame.parts.append(
                f'<line class="whisker" x1="{frame.px(row["low"]):.1f}" y1="{y:.1f}" '
                f'x2="{frame.px(row["high"]):.1f}" y2="{y:.1f}" stroke="{row["colour"]}"/>'
            )
        frame.parts.append(
            f'<text class="row-label" x="{label_width - 8}" y="{y + 4:.1f}" text-anchor="end">'
            f'{escape(row["label"])}</text><circle class="point" cx="{frame.px(row["auc"]):.1f}" '
            f'cy="{y:.1f}" r="4.5" fill="{row["colour"]}"><title>{escape(text)}</title></circle>'
        )
    return frame.svg(title, [(name, colour, True) for name, _, colour in references])


def heatmap(
    values: np.ndarray,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str,
    cell_title: str = "{row} {column}: {value:.3g}",
) -> Markup:
    """A grid of cells shaded from white (0) to dark blue (the largest value); NaN cells are grey."""
    rows, columns = values.shape
    cell = max(10, min(28, 560 // max(columns, 1)))
    left, top = 48, 26
    width, height = left + cell * columns + 10, top + cell * rows + 10
    peak = float(np.nanmax(values)) if np.isfinite(values).any() and np.nanmax(values) > 0 else 1.0
    parts = []
    for j, label in enumerate(column_labels):
        parts.append(
            f'<text class="tick" x="{left + cell * (j + 0.5):.1f}" y="{top - 8}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    for i, row_label in enumerate(row_labels):
        parts.append(
            f'<text class="tick" x="{left - 6}" y="{top + cell * (i + 0.7):.1f}" '
            f'text-anchor="end">{escape(row_label)}</text>'
        )
        for j, column_label in enumerate(column_labels):
            value = float(values[i, j])
            fill = "#dddddd" if not np.isfinite(value) else sequential_colour(value / peak)
            tip = (
                f"{row_label} {column_label}: n/a"
                if not np.isfinite(value)
                else cell_title.format(row=row_label, column=column_label, value=value)
            )
            parts.append(
                f'<rect class="cell" x="{left + cell * j}" y="{top + cell * i}" width="{cell}" '
                f'height="{cell}" fill="{fill}"><title>{escape(tip)}</title></rect>'
            )
    return Markup(
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f"<title>{escape(title)}</title>{''.join(parts)}</svg>"
    )


def histogram(edges: Sequence[float], counts: dict[str, Sequence[int]], title: str, x_label: str) -> Markup:
    """Side-by-side bars per bin for each named group (e.g. the two classes)."""
    peak = max((max(c, default=0) for c in counts.values()), default=0) or 1
    frame = Frame((edges[0], edges[-1]), (0, peak * 1.05))
    step = max(1, int(np.ceil(len(edges) / 8)))
    frame.axes(x_label, "examples", [edges[i] for i in range(0, len(edges), step)], nice_ticks(0, peak))
    groups = list(counts)
    for g, name in enumerate(groups):
        colour = CLASS_COLOURS.get(name, PALETTE[g % len(PALETTE)])
        for lo, hi, count in zip(edges[:-1], edges[1:], counts[name], strict=False):
            x0, x1 = frame.px(lo), frame.px(hi)
            bar = (x1 - x0) / len(groups)
            y = frame.py(count)
            frame.parts.append(
                f'<rect class="bar" x="{x0 + g * bar:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{frame.py(0) - y:.1f}" fill="{colour}"><title>{escape(name)}, '
                f"{lo:g}-{hi:g} tokens: {count}</title></rect>"
            )
    legend = [(name, CLASS_COLOURS.get(name, PALETTE[g % len(PALETTE)]), False) for g, name in enumerate(groups)]
    return frame.svg(title, legend)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    return [float(v) for v in np.arange(np.ceil(lo / step) * step, hi + step * 1e-9, step)]


def sequential_colour(fraction: float) -> str:
    """White at 0 to dark blue at 1, for heat maps."""
    f = float(np.clip(fraction, 0, 1))
    r, g, b = (255 + (8 - 255) * f, 255 + (48 - 255) * f, 255 + (107 - 255) * f)
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def auc_colour(auc: float) -> str:
    """The overview's cell colour: white at 0.5 (chance), greener up to 1.0, redder down to 0."""
    if auc >= 0.5:
        f = (auc - 0.5) / 0.5
        r, g, b = 255 + (0 - 255) * f, 255 + (109 - 255) * f, 255 + (44 - 255) * f
    else:
        f = (0.5 - auc) / 0.5
        r, g, b = 255 + (203 - 255) * f, 255 + (24 - 255) * f, 255 + (29 - 255) * f
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def delta_colour(delta: float) -> str:
    """The Δ-vs-baseline cell colour: white at 0, greener up to +0.2 and beyond, redder down to -0.2."""
    f = float(np.clip(abs(delta) / 0.2, 0, 1))
    target = (49, 163, 84) if delta >= 0 else (222, 45, 38)
    r, g, b = (255 + (c - 255) * f for c in target)
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"
