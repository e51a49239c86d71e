"""`featstore report` at benchmark scale: N datasets x S probe settings, timed against a floor measured in
the same process.

The features are real (random:tiny built over N toy datasets); the probe results are synthetic rows written
through the catalog's own `replace_probe_results` (scores = label + noise, random head weights), because the
report reads results, it does not fit them, and N x S real fits would dominate the run. Prints:
1. report seconds, pages, bytes, the largest page;
2. the floor: reading what the report shows once, plainly (every probe_results and probe_scores row in one
   query each, and one layer of every test split's attention through zarr), and report / floor.

Run: python benchmarks/report_scale.py --datasets 113 --settings 20
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from featstore.api import Store
from featstore.catalog.database import catalog_writer
from featstore.catalog.probe_records import replace_probe_results
from featstore.catalog.splits import SplitParams
from featstore.datasets.cleaning import clean_datasets
from featstore.datasets.registry import load_registry
from featstore.extraction.build import build_features
from featstore.extraction.plan import BuildSettings
from featstore.project import Project, init_project
from featstore.report.site import write_report
from tests.factories import registry_row, toy_raw, write_registry

MODEL = "random:tiny"


def toy_store(root: Path, n_datasets: int, n_examples: int) -> Project:
    """N cleaned toy datasets with random:tiny features."""
    project = init_project(root)
    project.raw_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for number in range(1, n_datasets + 1):
        toy_raw(n_examples, seed=number).to_csv(project.raw_dir / f"toy{number}.csv", index=False)
        rows.append(registry_row(number, f"toy{number}", f"toy{number}.csv"))
    write_registry(project, rows)
    clean_datasets(project, load_registry(project), SplitParams())
    build_features(project, MODEL, None, BuildSettings(device="cpu"))
    return project


def synthetic_results(project: Project, n_settings: int) -> int:
    """n_settings rows per dataset (baseline, length control, attention settings) with scores and weights."""
    rng = np.random.default_rng(0)
    test = Store(project).sql(
        "SELECT f.dataset, f.example_id, e.label FROM features f JOIN examples e "
        "USING (example_id) WHERE f.split = 'test' AND f.model = ?",
        [MODEL],
    )
    results, scores, weights = [], [], []
    for dataset, rows in test.groupby("dataset"):
        for s in range(n_settings):
            feature, layers, aggregation, baseline = (
                ("resid", "1", "last-token", True)
                if s == 0
                else ("length", "", "log-seq_len", False)
                if s == 1
                else ("attn", "0,1" if s % 2 else str(s % 2), f"bins:{s}", False)
            )
            result_id = f"{dataset}-{s}"
            score = rows["label"].to_numpy() * rng.uniform(0, 2) + rng.normal(size=len(rows))
            results.append(
                {
                    "result_id": result_id,
                    "dataset": dataset,
                    "model": MODEL,
                    "feature": feature,
                    "layers": layers,
                    "heads": "all",
                    "aggregation": aggregation,
                    "probe": "logreg",
                    "baseline": baseline,
                    "hyperparameters": "{}",
                    "roc_auc": rng.uniform(0.5, 1),
                    "roc_auc_ci_low": 0.5,
                    "roc_auc_ci_high": 1.0,
                    "accuracy": 0.5,
                    "balanced_accuracy": 0.5,
                    "f1": 0.5,
                    "n_train": 1,
                    "n_test": len(rows),
                    "n_features": 8,
                    "seed": 0,
                    "fit_seconds": 0.0,
                    "featstore_version": "bench",
                    "created_at": pd.Timestamp.now(),
                    "probe_path": "",
                }
            )
            scores.append(pd.DataFrame({"result_id": result_id, "example_id": rows["example_id"], "score": score}))
            if feature == "attn":
                layer, head = np.meshgrid(range(2), range(4), indexing="ij")
                weights.append(
                    pd.DataFrame(
                        {
                            "result_id": result_id,
                            "layer": layer.ravel(),
                            "head": head.ravel(),
                            "weight": rng.uniform(size=8),
                        }
                    )
                )
    with catalog_writer(project) as con:
        replace_probe_results(
            con, pd.DataFrame(results), pd.concat(scores), pd.concat(weights), [w["result_id"].iloc[0] for w in weights]
        )
    return len(results)


def floor_seconds(project: Project) -> float:
    """Reading what the report shows once: all result and score rows, one layer of every test split."""
    started = time.perf_counter()
    store = Store(project)
    store.sql("SELECT * FROM probe_results")
    store.sql("SELECT * FROM probe_scores")
    for path in store.sql("SELECT path FROM feature_splits WHERE split = 'test'")["path"]:
        zarr.open_group(project.store_dir / path, mode="r")["attn"][:, 0]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=113)
    parser.add_argument("--settings", type=int, default=20)
    parser.add_argument("--examples", type=int, default=1200, help="rows per toy dataset (train 1024, test the rest)")
    parser.add_argument("--root", type=Path, help="keep the built project here and reuse it on later runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = args.root or Path(folder) / "p"
        if not (root / "store" / "catalog.duckdb").is_file():
            started = time.perf_counter()
            project = toy_store(root, args.datasets, args.examples)
            n_results = synthetic_results(project, args.settings)
            print(
                f"setup: {args.datasets} datasets built and {n_results} results written in "
                f"{time.perf_counter() - started:.0f} s"
            )
        project = Project(root.resolve())
        summary = write_report(project)
        floor = floor_seconds(project)
        pages = sorted((f.stat().st_size, f.relative_to(summary.folder)) for f in summary.folder.rglob("*.html"))
        print(
            json.dumps(
                {
                    "report_seconds": round(summary.seconds, 2),
                    "pages": summary.pages,
                    "bytes": summary.bytes,
                    "largest_page": [str(pages[-1][1]), pages[-1][0]],
                    "floor_seconds": round(floor, 2),
                    "report_over_floor": round(summary.seconds / floor, 1),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
