"""`featstore report`: write the static site (pages, shared assets, the JSON they were rendered from)
into a temporary folder and swap it in, so a server never serves a half-written report; and serve it."""

from __future__ import annotations

import functools
import http.server
import importlib.resources
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dask
from tqdm import tqdm

from featstore.catalog.database import upgrade_catalog
from featstore.errors import FeatstoreError
from featstore.probing.specs import HARD_THRESHOLD
from featstore.project import Project
from featstore.report import data, pages
from featstore.store.atomic import swap_folder
from featstore.store.layout import model_dir_name
from featstore.store.safe_paths import checked_name

ASSETS = ("report.css", "report.js", "example.js")
MARKER = ".featstore-report"
DATASETS_PER_WORKER = 8  # below 2 x this, one process: starting a worker costs about as much as 8 pages


@dataclass(frozen=True)
class ReportSummary:
    """Where the report was written, how many pages and bytes it has, and how long it took."""

    folder: Path
    pages: int
    bytes: int
    seconds: float


def write_report(
    project: Project,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    out: Path | None = None,
    threshold: float = HARD_THRESHOLD,
) -> ReportSummary:
    """Write the report of these models and datasets (default: all built) to `out` (default `<root>/report`)."""
    started = time.perf_counter()
    if not 0 <= threshold <= 1:
        raise FeatstoreError(f"the hard threshold is an AUC in [0, 1], not {threshold}")
    upgrade_catalog(project)
    scope = data.resolve_scope(project, models, datasets, threshold)
    for model, chosen in scope.models.items():  # names from the catalog become file names below `out`
        checked_name(model_dir_name(model), "model")
        for dataset in chosen:
            checked_name(dataset, "dataset")
    out = Path(out or project.report_dir).resolve()
    _check_replaceable(out, project)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise FeatstoreError(f"cannot write a report next to {out}: {err.strerror}") from None
    try:
        _write_site(project, scope, staging)
        (staging / MARKER).write_text("written by featstore report; the folder is replaced whole on each run\n")
        os.chmod(staging, 0o755)
        swap_folder(staging, out)
    except OSError as err:
        raise FeatstoreError(f"cannot write the report to {out}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = [f for f in out.rglob("*") if f.is_file()]
    return ReportSummary(
        out,
        sum(f.suffix == ".html" for f in files),
        sum(f.stat().st_size for f in files),
        time.perf_counter() - started,
    )


def _check_replaceable(out: Path, project: Project) -> None:
    """Refuse an output folder that holds the project, or an existing path that no report run wrote."""
    if out == project.root or out in project.root.parents:
        raise FeatstoreError(f"--out {out} holds the project itself; choose a folder of its own")
    if out.exists() and not (out / MARKER).is_file():
        raise FeatstoreError(f"{out} exists and was not written by featstore report; choose another --out or remove it")


def serve(folder: Path, port: int = 8000) -> None:
    """Serve `folder` on 127.0.0.1 until interrupted (http.server, as `python -m http.server -d folder`)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as err:
        raise FeatstoreError(f"cannot serve on 127.0.0.1:{port}: {err.strerror}") from None
    with server:
        host, bound = server.server_address[:2]
        print(f"featstore: serving {folder} at http://{host}:{bound}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """http.server's handler without a log line per request (errors still reach stderr)."""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        if args and str(args[1] if len(args) > 1 else "").startswith(("4", "5")):
            super().log_message(format, *args)


def _write_site(project: Project, scope: data.Scope, folder: Path) -> None:
    env = pages.environment()
    assets = folder / "assets"
    assets.mkdir()
    for name in ASSETS:
        (assets / name).write_bytes(importlib.resources.files("featstore.report").joinpath("static", name).read_bytes())
    sections = []
    for model, datasets in scope.models.items():
        model_data = data.load_model_data(project, model, datasets)
        comparisons = data.baseline_comparisons(project, model_data.results)
        sections.append(
            {
                "model": model,
                "folder": model_dir_name(model),
                "overview": data.overview(model_data.results, datasets, scope.threshold, comparisons),
            }
        )
        _write_datasets(project, model_data, datasets, scope.threshold, folder)
    summary = data.store_summary(project, scope)
    _write(folder / "index.html", pages.overview_page(env, sections))
    _write(folder / "store.html", pages.store_page(env, summary, str(project.root), project.store.url))
    _write(folder / "example.html", pages.example_page(env))
    _write_json(folder / "data" / "overview.json", {"sections": sections})
    _write_json(folder / "data" / "store.json", {"models": summary})


def _write_datasets(
    project: Project, model_data: data.ModelData, datasets: list[str], threshold: float, folder: Path
) -> None:
    """Every dataset's page and data, in worker processes when there are many (reading zarr chunks is
    CPU-bound Python, so threads would not help), else in this process."""
    workers = min(os.cpu_count() or 1, len(datasets) // DATASETS_PER_WORKER)
    progress = functools.partial(
        tqdm, total=len(datasets), unit="dataset", desc=f"report {model_data.model}", dynamic_ncols=True, disable=None
    )
    if workers < 2:
        _start_worker(project, model_data, threshold, folder)
        try:
            for _ in progress(map(_write_dataset, datasets)):
                pass
        finally:
            _WORKER.clear()
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding zarr's and DuckDB's threads
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(project, model_data, threshold, folder)
    ) as pool:
        for _ in progress(pool.map(_write_dataset, datasets)):
            pass


_WORKER: dict = {}


def _start_worker(project: Project, model_data: data.ModelData, threshold: float, folder: Path) -> None:
    """What every dataset of one model shares, set up once per process."""
    _WORKER.update(
        project=project,
        data=model_data,
        threshold=threshold,
        folder=folder,
        env=pages.environment(),
        decoder=data.token_decoder(project, model_data.model),
    )


def _write_dataset(dataset: str) -> None:
    """One dataset's page, its JSON and its linked examples' JSON."""
    project, model_data, folder = _WORKER["project"], _WORKER["data"], _WORKER["folder"]
    model_folder = model_dir_name(model_data.model)
    with dask.config.set(scheduler="synchronous"):  # small slices: no dask thread pool
        page = data.dataset_page(project, model_data, dataset, _WORKER["threshold"])
        examples = data.example_records(project, model_data, page, _WORKER["decoder"])
    _write(folder / "models" / model_folder / f"{dataset}.html", pages.dataset_page(_WORKER["env"], page, model_folder))
    _write_json(folder / "data" / model_folder / f"{dataset}.json", page)
    for record in examples:
        _write_json(folder / "data" / model_folder / dataset / "examples" / f"{record['example_id']}.json", record)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_json(path: Path, value: object) -> None:
    _write(path, json.dumps(value, separators=(",", ":"), allow_nan=False, default=str))
