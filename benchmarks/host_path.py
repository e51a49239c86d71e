"""Time the build's host path alone: `featstore build` with the forward replaced by synthetic rows of a named
model's shapes, so tokenising, planning, gathering shards, compressing, writing and publishing are all that run.

For each model (default random:gpt2-medium, 24 layers x 16 heads, d_model 1,024, and random:llama-1b, 16 x 32,
d_model 2,048) over 87_glue_cola, 60_wikidata_occupation_isathlete and 100_news_fake (imported from sae-probes
unless --project names a project holding them; --limit 300; --batch-tokens 65536), in one run:
1. "old": the host path as it was (one writer thread, the chunks of LEGACY_CHUNKING);
2. "new": the defaults (default_writers() threads, CHUNKING);
3. "codec": the raw codec (Blosc-zstd, the same level) on the same shard bytes, cut in the new chunks and encoded
   by all cores, nothing else timed;
4. "bare": the bare SDPA forward of the model (seeded random weights, logits_to_keep=1, the CPU batch budget) on
   about --bare-tokens real tokens of rows picked at even token quantiles (a small sample: CPU forwards are slow).
Each of 1-3 runs in its own process, so its peak memory (getrusage maxrss, minus the process's size before the
build) is its own. Prints real tokens/s (and per CPU-second of the process, steadier on a shared machine), their
ratios, store bytes and peak memory, and checks that the old and
new stores decode to identical arrays. Synthetic rows come from a seeded bank of attention-like float16 values
(most small, as softmax rows are), a row's keys past its length 0, deterministic per batch.

Run: python benchmarks/host_path.py [--models random:gpt2-medium] [--project DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np

DATASETS = ("87_glue_cola", "60_wikidata_occupation_isathlete", "100_news_fake")
BANK_VALUES = 1 << 23  # 16 MB of float16: more than one row of every layer and head at 2,048 tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--project",
        help="a project folder holding --datasets (read only: it is copied); default: "
        "one made here with `featstore datasets import-sae-probes`",
    )
    parser.add_argument("--models", nargs="+", default=["random:gpt2-medium", "random:llama-1b"])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--batch-tokens", type=int, default=65536)
    parser.add_argument("--bare-tokens", type=int, default=4096, help="real tokens of the bare forward's sample")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: --limit 16, --bare-tokens 64")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "RUN"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.limit, args.bare_tokens = 16, 64
    if args.child:
        print(json.dumps(run_child(args, *args.child)))
        return
    with tempfile.TemporaryDirectory(prefix="host-path-") as scratch:
        if args.project is None:
            args.project = str(imported_project(Path(scratch) / "imported", args.datasets))
        for spec in args.models:
            folder = Path(scratch) / spec.replace(":", "-")
            report(
                spec,
                {run: in_child(args, spec, run, folder / run) for run in ("old", "new", "codec")},
                bare_forward(args, spec),
                args,
            )
            shutil.rmtree(folder)


def in_child(args: argparse.Namespace, spec: str, run: str, root: Path) -> dict:
    """One measured run in a fresh process (its own peak memory); returns what it printed."""
    copy_project(Path(args.project), root)
    command = [
        sys.executable,
        __file__,
        "--child",
        spec,
        run,
        "--root",
        str(root),
        "--project",
        args.project,
        "--datasets",
        *args.datasets,
        "--limit",
        str(args.limit),
        "--batch-tokens",
        str(args.batch_tokens),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{run} run of {spec} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "root": root}


def imported_project(root: Path, datasets: list[str]) -> Path:
    """A project with `datasets` imported from the sae-probes package."""
    from featstore.catalog.splits import SplitParams
    from featstore.datasets.sae_probes import import_sae_probes
    from featstore.project import init_project

    import_sae_probes(init_project(root), None, datasets, SplitParams())
    return root


def copy_project(source: Path, root: Path) -> None:
    """A writable copy of a project's registry and catalog (all `featstore build` reads)."""
    (root / "store").mkdir(parents=True)
    shutil.copytree(source / "datasets", root / "datasets")
    shutil.copy2(source / "store" / "catalog.duckdb", root / "store" / "catalog.duckdb")


def run_child(args: argparse.Namespace, spec: str, run: str) -> dict:
    """Build with synthetic rows (old or new settings), or encode the same shards with the raw codec."""
    from featstore.extraction import build as build_module
    from featstore.extraction.build import build_features
    from featstore.extraction.plan import BuildSettings
    from featstore.project import open_project
    from featstore.store.layout import LEGACY_CHUNKING

    model = shape_model(spec)
    parsed = build_module.parse_model_spec(spec)
    build_module.parse_model_spec = lambda _: SimpleNamespace(
        text=spec, key=parsed.key, fingerprint=parsed.fingerprint, load=lambda **_: model
    )
    build_module.release_model = lambda _: None
    build_module.check_capture = lambda *_: "synthetic"
    build_module.launch_capture = SyntheticRows(model).launch
    codec = RawCodec() if run == "codec" else None
    if codec is not None:
        build_module.ShardQueue = codec.queue
    settings = BuildSettings(device="cpu", limit=args.limit, batch_tokens=args.batch_tokens)
    if run == "old":
        settings = BuildSettings(
            device="cpu", limit=args.limit, batch_tokens=args.batch_tokens, writers=1, chunking=LEGACY_CHUNKING
        )
    project = open_project(args.root)
    before = rss_bytes()
    started, cpu_started = time.perf_counter(), time.process_time()
    build_features(project, spec, args.datasets, settings)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    from featstore.api import Store

    tokens = int(Store(project).sql("SELECT sum(seq_len) AS n FROM features")["n"][0])
    return {
        "tokens": tokens,
        "seconds": codec.seconds if codec else seconds,
        "cpu_seconds": codec.cpu_seconds if codec else cpu_seconds,
        "peak_bytes": rss_bytes() - before,
        "store_bytes": folder_bytes(project.store_dir / "features.zarr"),
        "shard_bytes": codec.bytes if codec else 0,
    }


def shape_model(spec: str):
    """A LoadedModel with the shapes and tokenizer of `random:<arch>` and no weights (the forward is synthetic)."""
    import torch

    from featstore.extraction.model_sources import parse_model_spec
    from featstore.extraction.models import LoadedModel
    from featstore.extraction.random_models import RANDOM_CONFIGS, byte_level_tokenizer

    config = RANDOM_CONFIGS[parse_model_spec(spec).target]()
    tokenizer = byte_level_tokenizer()
    sizes = dict(
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        d_model=config.hidden_size,
        n_ctx=config.max_position_embeddings,
    )
    identity = {"key": spec, "architecture": type(config).__name__, "d_vocab": config.vocab_size, **sizes}
    return LoadedModel(
        key=spec,
        bridge=None,
        tokenizer=tokenizer,
        identity=identity,
        device=torch.device("cpu"),
        prepend_bos=True,
        bos_token_id=tokenizer.bos_token_id,
        **sizes,
    )


class SyntheticRows:
    """Stands in for `launch_capture`: rows [B, layers, heads, T] cut from a seeded bank, 0 past each length."""

    def __init__(self, model):
        rng = np.random.default_rng(0)
        self.model = model
        self.bank = (rng.random(BANK_VALUES, dtype=np.float32) ** 6 * 0.2).astype(np.float16)
        self.resid_bank = rng.normal(0, 0.5, BANK_VALUES).astype(np.float16)

    def launch(self, model, input_ids: np.ndarray, lengths: np.ndarray, **_) -> object:
        layers, heads, d_model = self.model.n_layers, self.model.n_heads, self.model.d_model
        rng = np.random.default_rng([int(lengths.sum()), len(lengths), int(input_ids[0].sum())])
        attn = np.zeros((len(lengths), layers, heads, input_ids.shape[1]), dtype=np.float16)
        for row, n in enumerate(lengths):
            start = int(rng.integers(0, BANK_VALUES - layers * heads * n))
            attn[row, :, :, :n] = self.bank[start : start + layers * heads * n].reshape(layers, heads, n)
        start = int(rng.integers(0, BANK_VALUES - len(lengths) * layers * d_model))
        resid = self.resid_bank[start : start + len(lengths) * layers * d_model].reshape(len(lengths), layers, d_model)
        return Ready((attn, resid))


class Ready:
    def __init__(self, arrays):
        self.arrays = arrays

    def result(self):
        return self.arrays


class RawCodec:
    """Stands in for ShardQueue: encodes each shard's attention and residual, cut in the new layout's one-layer
    chunks, with numcodecs' Blosc on all cores; records the shard as written without writing it."""

    def __init__(self):
        import numcodecs

        from featstore.store.layout import CHUNKING

        self.codec = numcodecs.Blosc(cname="zstd", clevel=CHUNKING.clevel, shuffle=numcodecs.Blosc.SHUFFLE)
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count())
        self.seconds, self.cpu_seconds, self.bytes = 0.0, 0.0, 0

    def queue(self, writer, workers: int) -> RawCodec:
        self.writer = writer
        return self

    def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass

    def record_written(self) -> None:
        pass

    def put(self, shard: int, attn: np.ndarray, resid: np.ndarray, tokens: np.ndarray) -> None:
        rows = self.writer.shape.chunk_examples
        chunks = [attn[i : i + rows, layer] for i in range(0, len(attn), rows) for layer in range(attn.shape[1])]
        chunks += [resid[:, layer] for layer in range(resid.shape[1])]
        started, cpu_started = time.perf_counter(), time.process_time()
        self.bytes += sum(map(len, self.pool.map(lambda chunk: self.codec.encode(np.ascontiguousarray(chunk)), chunks)))
        self.seconds += time.perf_counter() - started
        self.cpu_seconds += time.process_time() - cpu_started
        self.writer.record_shard(shard, {})


def bare_forward(args: argparse.Namespace, spec: str) -> dict:
    """Real tokens/s of the bare SDPA forward on the first --bare-tokens tokens of the length-sorted rows."""
    import torch
    from transformers import AutoModelForCausalLM

    from featstore.extraction.batching import token_batches
    from featstore.extraction.build import CPU_BATCH_SLACK, CPU_BATCH_TOKENS, order_job, plan_jobs
    from featstore.extraction.model_sources import parse_model_spec
    from featstore.extraction.random_models import RANDOM_CONFIGS, RANDOM_SEED
    from featstore.project import open_project

    model = shape_model(spec)
    with tempfile.TemporaryDirectory(prefix="host-path-bare-") as root:
        copy_project(Path(args.project), Path(root))
        jobs = plan_jobs(open_project(root), args.datasets, args.limit)
    rows = []
    for job in jobs:
        split = order_job(model, job, model.n_ctx)
        rows += [split.token_ids[i] for i in range(len(split.token_ids))]
    rows.sort(key=len)
    sample = []
    for count in range(1, len(rows) + 1):  # rows at evenly spaced token quantiles: lengths weighted as in the build
        quantiles = (np.arange(count) + 0.5) / count * sum(map(len, rows))
        picked = [rows[i] for i in np.searchsorted(np.cumsum([len(ids) for ids in rows]), quantiles)]
        if sample and sum(map(len, picked)) > args.bare_tokens:
            break
        sample = picked
    sample.sort(key=len)
    lengths = np.array([len(ids) for ids in sample])
    torch.manual_seed(RANDOM_SEED)
    config = RANDOM_CONFIGS[parse_model_spec(spec).target]()
    hf_model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in token_batches(lengths, slice(0, len(lengths)), CPU_BATCH_TOKENS, CPU_BATCH_SLACK):
            width = int(lengths[batch].max())
            ids = np.zeros((batch.stop - batch.start, width), dtype=np.int64)
            for row, tokens in enumerate(sample[batch]):
                ids[row, : len(tokens)] = tokens
            mask = (np.arange(width) < lengths[batch][:, None]).astype(np.int64)
            hf_model(
                input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), logits_to_keep=1, use_cache=False
            )
    return {"tokens": int(lengths.sum()), "seconds": time.perf_counter() - started, "cpu_seconds": 0.0}


def report(spec: str, runs: dict[str, dict], bare: dict, args: argparse.Namespace) -> None:
    """Print one model's figures and check that the old and new stores decode to the same arrays."""
    rate = {name: run["tokens"] / run["seconds"] for name, run in {**runs, "bare": bare}.items()}
    per_cpu = {name: run["tokens"] / run["cpu_seconds"] for name, run in runs.items()}
    old, new, codec = runs["old"], runs["new"], runs["codec"]
    print(
        f"{spec}: {len(args.datasets)} datasets, --limit {args.limit}, --batch-tokens {args.batch_tokens}, "
        f"{new['tokens']:,} real tokens, {os.cpu_count()} cores"
    )
    for name, label in (
        ("old", "host path, old (1 writer, legacy chunks)"),
        ("new", "host path, new"),
        ("codec", "raw codec, all cores"),
        ("bare", f"bare forward, CPU, {bare['tokens']} tokens"),
    ):
        cpu = (
            f" ({per_cpu[name]:9,.0f} tok per CPU-s), peak +{runs[name]['peak_bytes'] / 2**20:,.0f} MiB"
            if name in runs
            else ""
        )
        print(f"  {label:45s} {rate[name]:10,.0f} tok/s{cpu}")
    print(
        f"  new / old {rate['new'] / rate['old']:.2f}x (per CPU-s {per_cpu['new'] / per_cpu['old']:.2f}x); "
        f"raw codec / new {rate['codec'] / rate['new']:.2f}x; new / bare forward {rate['new'] / rate['bare']:.1f}x"
    )
    print(
        f"  store: new {new['store_bytes'] / 2**20:,.1f} MiB, old {old['store_bytes'] / 2**20:,.1f} MiB "
        f"(new / old {new['store_bytes'] / old['store_bytes']:.3f}); raw codec bytes "
        f"{codec['shard_bytes'] / 2**20:,.1f} MiB"
    )
    read = {name: layer_read_seconds(runs[name]["root"], spec, args.datasets[-1]) for name in ("old", "new")}
    print(
        f"  one layer of {args.datasets[-1]}/test through the view: new {read['new'] * 1e3:,.0f} ms, "
        f"old {read['old'] * 1e3:,.0f} ms (best of 3)"
    )
    print(f"  decoded arrays identical, old vs new: {same_arrays(old['root'], new['root'], spec, args.datasets)}")


def layer_read_seconds(root: Path, spec: str, dataset: str) -> float:
    """The fastest of three reads of layer 1's attention rows of `dataset`'s test split (all examples)."""
    from featstore.api import Store
    from featstore.project import open_project

    times = []
    for _ in range(3):
        view = Store(open_project(root)).view(dataset, "test", model=spec)
        started = time.perf_counter()
        view["attn"].isel(layer=1).to_numpy()
        times.append(time.perf_counter() - started)
    return min(times)


def same_arrays(old_root: Path, new_root: Path, spec: str, datasets: list[str]) -> bool:
    """Whether every split's arrays decode to the same values in both stores."""
    from featstore.api import Store
    from featstore.project import open_project

    for dataset in datasets:
        for split in ("train", "test"):
            old, new = (Store(open_project(root)).view(dataset, split, model=spec) for root in (old_root, new_root))
            for start in range(0, old.sizes["example"], 128):  # a shard at a time: bounded memory
                rows = {"example": slice(start, start + 128)}
                for name in ("attn", "resid", "tokens", "seq_len", "example_id"):
                    if not np.array_equal(old[name].isel(rows).values, new[name].isel(rows).values):
                        return False
    return True


def rss_bytes() -> int:
    """This process's peak resident size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under `folder`."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


if __name__ == "__main__":
    main()
