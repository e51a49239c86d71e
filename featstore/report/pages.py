"""HTML pages of the report: Jinja2 templates (autoescaped: prompts and names are untrusted text) filled
with the data dicts of `featstore.report.data` and the SVG charts drawn from them."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from featstore.report import svg
from featstore.sizes import format_bytes

ROLE_COLOURS = {"baseline": "#555555", "length": "#6a3d9a", "control": "#999999"}
ROLE_NAMES = {"baseline": "baseline", "length": "length control", "control": "shuffled-label control"}
REFERENCE_ROLES = ("baseline", "length")  # drawn as reference lines; shuffled-label controls stay points (one each)


def environment() -> Environment:
    """The template environment with the report's filters."""
    env = Environment(
        loader=PackageLoader("featstore.report", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["auc_colour"] = svg.auc_colour
    env.filters["delta_colour"] = svg.delta_colour
    env.filters["auc_text"] = lambda auc: "#fff" if auc >= 0.85 else "#1d2330"
    env.filters["size"] = human_size
    env.filters["brief"] = brief
    env.globals["role_names"] = ROLE_NAMES
    env.globals["generated"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return env


def overview_page(env: Environment, sections: list[dict]) -> str:
    """The datasets x settings tables, one section per model."""
    return env.get_template("overview.html").render(title="Overview", root="", sections=sections)


def store_page(env: Environment, models: list[dict], project_root: str, store_url: str) -> str:
    """Models, splits, sizes and build settings, and where the project and its features live."""
    return env.get_template("store.html").render(
        title="Store", root="", models=models, project_root=project_root, store_url=store_url
    )


def example_page(env: Environment) -> str:
    """The one example viewer; it loads an example's JSON named in its query string."""
    return env.get_template("example.html").render(title="Example", root="")


def dataset_page(env: Environment, page: dict, folder: str) -> str:
    """One dataset's page under `models/<folder>/`, with its charts."""
    return env.get_template("dataset.html").render(
        title=page["dataset"], root="../../", page=page, folder=folder, charts=dataset_charts(page)
    )


def dataset_charts(page: dict) -> dict[str, Markup | list[Markup] | None]:
    """The SVG charts of a dataset page (None where the data for one is missing)."""
    references = [
        (f"{ROLE_NAMES[r['role']]} ({brief(r['setting'])})", r["auc"], ROLE_COLOURS[r["role"]])
        for r in page["results"]
        if r["role"] in REFERENCE_ROLES
    ]
    forest_rows = [
        {
            "label": brief(r["setting"]),
            "auc": r["auc"],
            "low": r["low"],
            "high": r["high"],
            "colour": ROLE_COLOURS.get(r["role"], "#6a3d9a" if r["flagged"] else svg.PALETTE[0]),
        }
        for r in page["results"]
    ]
    charts: dict = {
        "forest": svg.forest_plot(forest_rows, "test ROC AUC of every setting", references) if page["results"] else None
    }
    charts["roc"] = (
        svg.line_chart(
            [
                svg.Series(
                    f"{brief(c['setting'])} (AUC {c['auc']:.3f})",
                    c["fpr"],
                    c["tpr"],
                    ROLE_COLOURS.get(c["role"], svg.PALETTE[i % len(svg.PALETTE)]),
                    dashed=c["role"] != "probe",
                )
                for i, c in enumerate(page["roc"])
            ],
            "ROC curves on the test split",
            "false positive rate",
            "true positive rate",
            (0, 1),
            (0, 1),
            np.linspace(0, 1, 6),
            np.linspace(0, 1, 6),
            diagonal=True,
            point_format="{x:.3f}: {y:.3f}",
        )
        if page["roc"]
        else None
    )
    charts["layers"] = _layer_chart(page) if page["layer_curves"] else None
    charts["head_map"] = _head_map(page["head_map"]) if page["head_map"] else None
    charts["profiles"] = [_profile_chart(profile) for profile in page["top_heads"]]
    lengths = page["lengths"]
    charts["lengths"] = svg.histogram(
        lengths["edges"],
        {"positive": lengths["positive"], "negative": lengths["negative"]},
        "prompt length per class",
        "tokens",
    )
    return charts


def brief(label: str, width: int = 48) -> str:
    """A setting label cut to `width` characters in the middle (a stack of 30 bases is long; the end holds the
    `[control]` and `(seed N)` tags that tell rows apart); pages show the whole one on hover."""
    if len(label) <= width:
        return label
    tail = (width - 1) // 2
    return label[: width - 1 - tail] + "…" + label[-tail:]


def human_size(n: int | None) -> str:
    """Bytes as `12.3 MB` (`12 B` under a kB), a dash when unknown."""
    return "–" if n is None else format_bytes(n, "B")


def _layer_chart(page: dict) -> Markup:
    curves = page["layer_curves"]
    layers = [layer for c in curves for layer in c["layers"]]
    values = [v for c in curves for v in c["auc"] + [x for x in c["low"] + c["high"] if x is not None]]
    low = min(0.5, np.floor(min(values) * 10) / 10)
    series = [
        svg.Series(
            c["group"],
            c["layers"],
            c["auc"],
            svg.PALETTE[i % len(svg.PALETTE)],
            band=(c["low"], c["high"]) if None not in c["low"] + c["high"] else None,
            markers=True,
        )
        for i, c in enumerate(curves)
    ]
    references = [
        (ROLE_NAMES[r["role"]], r["auc"], ROLE_COLOURS[r["role"]])
        for r in page["results"]
        if r["role"] in REFERENCE_ROLES
    ]
    layer_ticks = [t for t in svg.nice_ticks(min(layers), max(layers), 8) if float(t).is_integer()] or sorted(
        set(layers)
    )
    return svg.line_chart(
        series,
        "test ROC AUC by layer",
        "layer",
        "test ROC AUC",
        (min(layers), max(layers)),
        (low, 1.0),
        layer_ticks,
        np.round(np.arange(low, 1.0001, 0.1), 2),
        hlines=references,
        point_format="layer {x:g}: AUC {y:.3f}",
    )


def _head_map(head_map: dict) -> Markup:
    values = np.array([[np.nan if v is None else v for v in row] for row in head_map["weights"]], dtype=float)
    return svg.heatmap(
        values,
        [f"L{layer}" for layer in head_map["layers"]],
        [f"H{h}" for h in range(head_map["n_heads"])],
        "probe weight per layer and head",
        "{row} {column}: weight {value:.4g}",
    )


def _profile_chart(profile: dict) -> Markup:
    series = [
        svg.Series(
            f"{name} (n={profile['n_' + name]})", profile["bins"], profile[name], svg.CLASS_COLOURS[name], markers=True
        )
        for name in ("positive", "negative")
        if profile[name] is not None
    ]
    peak = max(max(s.y) for s in series)
    return svg.line_chart(
        series,
        f"L{profile['layer']} H{profile['head']}: class-mean attention by relative position",
        f"relative position in the prompt (L{profile['layer']} H{profile['head']}, weight {profile['weight']:.3g})",
        "mean attention",
        (0, 1),
        (0, peak * 1.05),
        np.linspace(0, 1, 6),
        svg.nice_ticks(0, peak),
        point_format="bin at {x:.3f}: {y:.4f}",
    )
