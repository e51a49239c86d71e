"""Builders of small projects on disk: raw files and registry rows."""

from __future__ import annotations

import pandas as pd

from featstore.project import REGISTRY_COLUMNS, Project


def registry_row(number: int, tag: str, source: str, **overrides: str) -> dict:
    """A valid `main.csv` row for a raw file with columns `text` and `label`."""
    row = {c: "" for c in REGISTRY_COLUMNS}
    row.update(
        {
            "number": str(number),
            "Dataset Tag": tag,
            "source": source,
            "Probe from": "text",
            "Probe to": "label",
            "Data type": "Binary Classification",
            "Probe from extraction": "col",
            "Probe to extraction": "col",
        }
    )
    row.update(overrides)
    return row


def write_registry(project: Project, rows: list[dict]) -> None:
    pd.DataFrame(rows, columns=REGISTRY_COLUMNS).to_csv(project.registry_path, index=False)


def toy_raw(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A raw file whose label is whether the text mentions 'war'."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = ["peace", "war", "river", "stone", "cloud", "market"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))) + f" #{i}" for i in range(n)]
    return pd.DataFrame({"text": texts, "label": [int("war" in t) for t in texts], "stars": rng.integers(1, 6, n)})
