"""`featstore results` as text: readable in a 120-column terminal, the model named once, n_test and intervals shown."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from featstore.cli import main
from featstore.probing.results import results_text, setting_labels

STACK = (
    "stack[" + ";".join(f"L{layer} {aggregation}" for layer in range(24) for aggregation in ("first", "entropy")) + "]"
)


def synthetic_rows(n_datasets: int = 3) -> pd.DataFrame:
    """Results of a 24-layer model: 20 attention settings, a baseline and a meta probe with a very long label."""
    settings = [
        ("logreg", "attn", ",".join(map(str, range(24))), aggregation)
        for aggregation in (
            "first",
            "entropy",
            "max",
            "mean",
            "bins:8",
            "bins:4",
            "last:4",
            "first-nofirst",
            "entropy-ratio",
            "max-nofirst",
        )
    ]
    settings += [("mass-mean-lda", "attn", str(layer), "first") for layer in range(10)]
    settings += [("logreg", "resid", "12", "last-token"), ("meta", "attn", ",".join(map(str, range(24))), STACK)]
    rng = np.random.default_rng(0)
    rows = [
        {
            "dataset": f"{100 + d}_some_longer_dataset_tag",
            "model": "smollm2-135m",
            "probe": probe,
            "feature": feature,
            "layers": layers,
            "aggregation": aggregation,
            "seed": 0,
            "baseline": feature == "resid",
            "roc_auc": auc,
            "roc_auc_ci_low": auc - 0.05,
            "roc_auc_ci_high": min(auc + 0.05, 1.0),
            "n_test": 100 + d,
        }
        for d in range(n_datasets)
        for (probe, feature, layers, aggregation), auc in zip(
            settings, rng.uniform(0.5, 1.0, len(settings)), strict=False
        )
    ]
    frame = pd.DataFrame(rows)
    return frame.assign(setting=setting_labels(frame))


@pytest.mark.parametrize("ci", [False, True])
@pytest.mark.parametrize("width", [120, 80])
def test_many_settings_fit_the_width_in_several_tables(ci, width):
    rows = synthetic_rows()
    text = results_text(rows, ci=ci, width=width)
    lines = text.splitlines()
    assert max(map(len, lines)) <= width
    assert lines[0].startswith("smollm2-135m: test ROC AUC") and text.count("smollm2-135m") == 1
    tables = text.split("\n\n")
    assert len(tables) > 1 and all("dataset" in table and "n_test" in table for table in tables)
    data_lines = [line for line in lines if line.startswith(("100_", "101_", "102_"))]
    cells = [cell for line in data_lines for cell in re.split(r" {3,}", line)[2:]]
    expected = [
        f"{r.roc_auc:.3f} [{r.roc_auc_ci_low:.3f}, {r.roc_auc_ci_high:.3f}]" if ci else f"{r.roc_auc:.3f}"
        for r in rows.itertuples()
    ]
    assert len(data_lines) == 3 * len(tables) and sorted(cells) == sorted(expected)
    assert data_lines[0].split()[:2] == ["100_some_longer_dataset_tag", "100"]
    assert "[1] meta attn L0-23 stack[L0 first;L0 entropy;L1 first;" in text  # too long for a header: spelled out


def test_headers_hold_every_word_of_each_setting():
    rows = synthetic_rows(1)
    words = set(results_text(rows, width=120).split())
    assert all(set(label.split()) <= words for label in rows["setting"] if "stack[" not in label)


def test_results_command_fits_120_columns_with_n_test_and_intervals(reported, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    for args in ([], ["--ci"]):
        assert main(["--root", str(reported.root), "results", *args]) == 0
        out = capsys.readouterr().out
        assert max(map(len, out.splitlines())) <= 120
        assert out.count("random:tiny") == 1 and "n_test" in out
        assert [line.split()[:2] for line in out.splitlines() if line.startswith("1_toy")][0] == ["1_toy", "100"]
    assert "[" in out.split("1_toy", 1)[1].splitlines()[0]  # --ci: intervals in the cells
