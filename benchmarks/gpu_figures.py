"""The measurements of benchmarks/gpu_figures.sh that are not a `featstore build`: each subcommand appends one
JSON line to --out, so whatever finished before a timeout is kept.

- `bare`: the bare SDPA forward (a plain Hugging Face model of the random config, seeded and drawn on the device,
  logits_to_keep=1, no cache, attention mask) over the build's batches of the same splits (--limit, byte-level
  tokens, length-sorted, --batch-tokens): real tokens/s after one warm-up batch.
- `captures`: `capture_last_token` with each strategy on batches of random tokens --lengths long filling
  --batch-tokens: tokens/s per strategy and length.
- `build`: the figures of a finished build: real tokens and the splits' window (first start to last registration:
  splits overlap) from the catalog, the wall time the script
  measured, GPU utilisation and memory from the nvidia-smi samples (mean over the command, the busy window).

Run by benchmarks/gpu_figures.sh; `PYTHONPATH=. python benchmarks/gpu_figures.py <subcommand> --help` for the options.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.host_path import copy_project, shape_model

DATASETS = ["87_glue_cola", "60_wikidata_occupation_isathlete", "100_news_fake"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("bare", "captures", "build"):
        command = commands.add_parser(name)
        command.add_argument("--out", type=Path, required=True, help="the JSON-lines file to append to")
        command.add_argument("--label", required=True)
        command.add_argument("--model", default="random:gpt2-medium")
        command.add_argument("--dtype", default="float32")
        command.add_argument("--device", default="auto")
        command.add_argument("--project", type=Path)
        command.add_argument("--datasets", nargs="+", default=DATASETS)
        command.add_argument("--limit", type=int, default=300)
        command.add_argument("--batch-tokens", type=int, default=8192)
        command.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
        command.add_argument("--smi", type=Path, help="nvidia-smi CSV samples of the build")
        command.add_argument("--wall", type=float, help="the build command's wall seconds")
    args = parser.parse_args()
    figures = {"bare": bare, "captures": captures, "build": build}[args.command](args)
    with args.out.open("a") as out:
        out.write(json.dumps({"step": args.command, "label": args.label, **figures}) + "\n")
    print(json.dumps({"label": args.label, **figures}))


def bare(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from featstore.extraction.build import default_batch_slack, order_job, plan_jobs
    from featstore.extraction.model_sources import parse_model_spec
    from featstore.extraction.models import resolve_device, resolve_dtype
    from featstore.extraction.plan import split_batches
    from featstore.extraction.random_models import RANDOM_CONFIGS, RANDOM_SEED
    from featstore.project import open_project

    device = resolve_device(args.device)
    config = RANDOM_CONFIGS[parse_model_spec(args.model).target]()
    with tempfile.TemporaryDirectory() as root:  # plan_jobs opens the catalog for writing: use a copy
        copy_project(args.project, Path(root))
        jobs = plan_jobs(open_project(root), args.datasets, args.limit)
    started = time.perf_counter()
    torch.manual_seed(RANDOM_SEED)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=resolve_dtype(args.dtype))
        model.eval()
    boot_seconds = time.perf_counter() - started
    shaped = shape_model(args.model)  # what order_job needs of a model (its tokenizer, BOS prepended), no weights
    batches = []
    for job in jobs:
        split = order_job(shaped, job, config.max_position_embeddings)
        for rows in split_batches(split, args.batch_tokens, default_batch_slack(device)):
            batches.append((split.padded(rows), split.seq_lens[rows]))
    tokens = int(sum(lengths.sum() for _, lengths in batches))
    with torch.inference_mode():
        run_batch(model, *batches[-1], device)  # warm-up: the widest batch
        _synchronize(device)
        started = time.perf_counter()
        for ids, lengths in batches:
            run_batch(model, ids, lengths, device)
        _synchronize(device)
    seconds = time.perf_counter() - started
    return {
        "model": args.model,
        "dtype": args.dtype,
        "batch_tokens": args.batch_tokens,
        "tokens": tokens,
        "seconds": seconds,
        "tok_s": tokens / seconds,
        "boot_seconds": boot_seconds,
        "peak_gpu_bytes": _peak_gpu_bytes(device),
    }


def run_batch(model, ids: np.ndarray, lengths: np.ndarray, device) -> None:
    import torch

    mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)
    model(
        input_ids=torch.as_tensor(ids, device=device),
        attention_mask=torch.as_tensor(mask, device=device),
        logits_to_keep=1,
        use_cache=False,
    )


def captures(args: argparse.Namespace) -> dict:
    from featstore.extraction.capture import capture_last_token
    from featstore.extraction.model_sources import parse_model_spec

    started = time.perf_counter()
    model = parse_model_spec(args.model).load(device=args.device, dtype=args.dtype)
    figures = {
        "model": args.model,
        "dtype": args.dtype,
        "batch_tokens": args.batch_tokens,
        "boot_seconds": time.perf_counter() - started,
    }
    rng = np.random.default_rng(0)
    for length in args.lengths:
        rows = max(1, args.batch_tokens // length)
        ids = rng.integers(0, 256, size=(rows, length))
        lengths = np.full(rows, length)
        for strategy in ("last-row", "pattern"):
            capture_last_token(model, ids, lengths, strategy=strategy)  # warm-up
            started = time.perf_counter()
            repeats = 3
            for _ in range(repeats):
                capture_last_token(model, ids, lengths, strategy=strategy)
            figures[f"{strategy}@{length}_tok_s"] = repeats * rows * length / (time.perf_counter() - started)
        figures[f"last-row/pattern@{length}"] = figures[f"last-row@{length}_tok_s"] / figures[f"pattern@{length}_tok_s"]
    figures["peak_gpu_bytes"] = _peak_gpu_bytes(model.device)
    return figures


def build(args: argparse.Namespace) -> dict:
    import duckdb

    with duckdb.connect(str(args.project / "store" / "catalog.duckdb"), read_only=True) as con:
        tokens, splits = con.execute("SELECT sum(seq_len), count(DISTINCT dataset || split) FROM features").fetchone()
        seconds, settings = con.execute(  # the splits overlap (one finishes while the next runs): their window
            "SELECT max(epoch(built_at)) - min(epoch(built_at) - build_seconds), any_value(settings) "
            "FROM feature_splits WHERE status = 'complete'"
        ).fetchone()
    figures = {
        "tokens": int(tokens or 0),
        "splits": splits,
        "split_seconds": seconds,
        "wall": args.wall,
        "settings": json.loads(settings) if settings else None,
        "tok_s_splits": (tokens or 0) / seconds if seconds else None,
    }
    if args.smi and args.smi.exists():
        figures.update(_utilisation(args.smi, figures["tokens"]))
    return figures


def _utilisation(smi: Path, tokens: int) -> dict:
    """Mean GPU utilisation over all samples, the busy window (first to last sample above 0 %) and the tokens/s
    in it, the peak memory used."""
    with smi.open() as handle:
        rows = [row for row in csv.reader(handle) if row and row[0].strip()[:1].isdigit()]
    if not rows:
        return {"samples": 0}
    busy = [float(row[0].split()[0]) for row in rows]
    memory = [float(row[1].split()[0]) for row in rows]
    active = [i for i, value in enumerate(busy) if value > 0]
    window = (active[-1] - active[0] + 1) * 0.5 if active else 0.0
    inside = busy[active[0] : active[-1] + 1] if active else []
    return {
        "samples": len(rows),
        "gpu_util_mean": float(np.mean(busy)),
        "busy_window_s": window,
        "gpu_util_mean_in_window": float(np.mean(inside)) if inside else 0.0,
        "tok_s_busy_window": tokens / window if window else None,
        "gpu_mem_peak_mib": max(memory),
    }


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gpu_bytes(device) -> int | None:
    import torch

    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


if __name__ == "__main__":
    main()
