"""The cost of verification on the read path: one layer of a test split read through the verifying store,
against the same split written without checksums and read straight from disk, in the same process.

The split is written by `SplitWriter` (the build's writer: same chunks, shards, codecs and manifest) from
synthetic rows of a real model's shape (default: gpt2-medium, 24 layers x 16 heads, context 1024), with
prompt lengths drawn log-uniformly between 8 and the context, sorted as a build sorts them; attention rows are
random softmax rows inside each length, padding 0. No model runs, so the benchmark takes seconds.
"Unverified" is a copy of the split as format 1 stored it (no crc32c codec, no manifest) opened with a plain
zarr LocalStore; "verified" is the split opened as the views open it (`open_split_store`: sealed root, manifest
lookups, a crc32c check of every chunk read, by the store and by zarr's codec). Opening is inside the timing.
Both are read as the views read them, alternately, REPEATS times; printed: the ratio of the best times and
the median of the paired ratios, for process CPU time and wall-clock time:
1. the attention of one layer loaded through xarray with dask chunks (the probes' path);
2. the same straight through zarr (`chunks=None`, the learned probe's and the report's path);
3. first-token mass and entropy of that layer (the `--aggregation first entropy` probes).

Run: python benchmarks/verified_read.py [--examples 1000 --layers 24 --heads 16 --context 1024]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr

from featstore.store.integrity import SplitRef, open_split_store
from featstore.store.layout import SplitShape, compressor
from featstore.store.location import LocalLocation
from featstore.store.writer import SplitWriter
from featstore.views import aggregations  # noqa: F401  (the .masked accessor)
from featstore.views.view import DASK_CHUNKS

REPEATS = 21
D_MODEL = 1024


def synthetic_split(folder: Path, n: int, layers: int, heads: int, context: int, seed: int = 0) -> Path:
    """Write a length-sorted split of random attention rows with `SplitWriter`, shard by shard, under `folder`;
    returns its published version folder."""
    rng = np.random.default_rng(seed)
    seq_lens = np.sort(np.exp(rng.uniform(np.log(8), np.log(context), n)).astype(np.int32))
    shape = SplitShape(n, layers, heads, D_MODEL, int(seq_lens.max()))
    writer = SplitWriter(LocalLocation(folder.parent), folder.name, shape, {"synthetic": True}, build_key="benchmark")
    writer.write_index(np.arange(n, dtype=np.int64), seq_lens)
    for shard in range(shape.n_shards):
        rows = shape.shard_rows(shard)
        lengths = seq_lens[rows]
        width = int(lengths.max())
        padding = np.arange(width) >= lengths[:, None]
        weights = np.exp(rng.standard_normal((len(lengths), layers, heads, width), dtype=np.float32))
        weights[np.broadcast_to(padding[:, None, None, :], weights.shape)] = 0
        attn = (weights / weights.sum(-1, keepdims=True)).astype(np.float16)
        resid = rng.standard_normal((len(lengths), layers, D_MODEL), dtype=np.float32).astype(np.float16)
        tokens = np.where(np.arange(width) < lengths[:, None], rng.integers(1, 50000, (len(lengths), width)), 0)
        writer.write_shard(shard, attn, resid, tokens.astype(np.int32))
    return folder.parent / writer.publish()


def unverified_copy(folder: Path, target: Path) -> Path:
    """The split's arrays rewritten as format 1 stored them: same chunks and shards, no crc32c, no manifest."""
    source = zarr.open_group(folder, mode="r")
    copy = zarr.open_group(target, mode="w", zarr_format=3)
    for name, array in source.arrays():
        compressors = [compressor()] if array.dtype == np.float16 else "auto"
        written = copy.create_array(
            name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=array.chunks,
            shards=array.shards,
            compressors=compressors,
            fill_value=0,
            dimension_names=array.metadata.dimension_names,
        )
        written[...] = array[...]
    return target


def open_split(store, dask_chunks: bool) -> xr.Dataset:
    view = xr.open_zarr(store, consolidated=False, zarr_format=3, chunks=DASK_CHUNKS if dask_chunks else None)
    return view.assign_coords(seq_len=("example", view["seq_len"].values), token=np.arange(view.sizes["token"]))


def read_layer(store, layer: int, dask_chunks: bool) -> None:
    np.asarray(open_split(store, dask_chunks)["attn"].isel(layer=layer).values)


def reduce_layer(store, layer: int) -> None:
    attn = open_split(store, True)["attn"].isel(layer=[layer])
    dask.compute(attn.masked.first(), attn.masked.entropy())


def paired_times(plain, verified) -> np.ndarray:
    """Wall-clock and process-CPU seconds of two actions run alternately REPEATS times after a warm-up, shaped
    (REPEATS, action, [wall, CPU]). CPU time counts every thread (zarr's I/O loop and reader threads) and weighs
    less than wall-clock time when other work shares the machine."""
    plain(), verified()
    times = np.zeros((REPEATS, 2, 2))
    for repeat in range(REPEATS):
        for column, action in enumerate((plain, verified)):
            wall, cpu = time.perf_counter(), time.process_time()
            action()
            times[repeat, column] = time.perf_counter() - wall, time.process_time() - cpu
    return times


def compare(folder: Path, ref: SplitRef, plain: Path, layer: int | None) -> None:
    """Print the three verified / unverified ratios."""
    shape = zarr.open_group(folder, mode="r")["attn"].shape
    layer = shape[1] // 2 if layer is None else layer
    print(
        f"{ref}: attn {shape} (examples, layers, heads, tokens), layer {layer}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    cases = {
        "1. one layer through dask": lambda store: read_layer(store, layer, True),
        "2. one layer straight through zarr": lambda store: read_layer(store, layer, False),
        "3. first-token mass + entropy of one layer": lambda store: reduce_layer(store, layer),
    }
    for label, action in cases.items():
        times = paired_times(
            partial(action, str(plain)),
            partial(action, open_split_store(LocalLocation(folder.parent), folder.name, ref)),
        )
        best = times.min(axis=0)
        median = np.median(times[:, 1] / times[:, 0], axis=0)
        print(
            f"{label}: verified / unverified, CPU time {best[1, 1] / best[0, 1]:.3f}x best-of, {median[1]:.3f}x "
            f"median of pairs; wall-clock {best[1, 0] / best[0, 0]:.3f}x best-of, {median[0]:.3f}x median  "
            f"[best CPU {best[1, 1] * 1e3:.0f} vs {best[0, 1] * 1e3:.0f} ms, wall {best[1, 0] * 1e3:.0f} vs "
            f"{best[0, 0] * 1e3:.0f} ms]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="rows of the test split (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--context", type=int, default=1024, help="longest prompt length (default: %(default)s)")
    parser.add_argument("--layer", type=int, help="the layer read (default: the middle one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="featstore-bench-") as scratch:
        folder = synthetic_split(Path(scratch) / "test", args.examples, args.layers, args.heads, args.context)
        ref = SplitRef("synthetic", "benchmark", "test")
        compare(folder, ref, unverified_copy(folder, Path(scratch) / "unverified"), args.layer)


if __name__ == "__main__":
    main()
