"""The cost of verification on the read path: one layer of a test split read through the verifying store,
against the same split written without checksums and read straight from disk, in the same process.

"Unverified" is a copy of the split as format 1 wrote it (the same chunks, shards and compressors, no crc32c
codec, no manifest) opened with a plain zarr LocalStore; "verified" is the stored split opened as the views open
it (`open_split_store`: sealed root, manifest lookups, a crc32c per chunk read by the store and by zarr's codec).
Both are read as the views read them, alternately, best of REPEATS:
1. the attention of one layer loaded through xarray with dask chunks (the probes' path);
2. the same straight through zarr (`chunks=None`, the learned probe's and the report's path);
3. first-token mass and entropy of that layer (one read, the `--aggregation first entropy` probes).

Run: python benchmarks/verified_read.py --model random:gpt2-medium --dataset 87_glue_cola --limit 512
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr

from featstore.catalog.splits import TEST, SplitParams
from featstore.datasets.sae_probes import import_sae_probes
from featstore.extraction.build import BuildSettings, build_features
from featstore.extraction.models import model_key
from featstore.project import Project, init_project
from featstore.store.integrity import SplitRef, open_split_store
from featstore.store.layout import compressor, split_path
from featstore.views import aggregations  # noqa: F401  (the .masked accessor)
from featstore.views.view import DASK_CHUNKS

REPEATS = 7


def unverified_copy(folder: Path, target: Path) -> Path:
    """The split's arrays rewritten as format 1 stored them: same chunks and shards, no crc32c, no manifest."""
    source = zarr.open_group(folder, mode="r")
    copy = zarr.open_group(target, mode="w", zarr_format=3)
    for name, array in source.arrays():
        shards = array.shards
        compressors = [compressor()] if array.dtype == np.float16 else "auto"
        written = copy.create_array(name, shape=array.shape, dtype=array.dtype, chunks=array.chunks, shards=shards,
                                    compressors=compressors, fill_value=0,
                                    dimension_names=array.metadata.dimension_names)
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


def best_pair(plain, verified) -> tuple[float, float]:
    """The fastest wall-clock seconds of each of two actions, run alternately REPEATS times after a warm-up."""
    plain(), verified()
    times = np.zeros((REPEATS, 2))
    for repeat in range(REPEATS):
        for column, action in enumerate((plain, verified)):
            started = time.perf_counter()
            action()
            times[repeat, column] = time.perf_counter() - started
    return float(times[:, 0].min()), float(times[:, 1].min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=512, help="examples per split")
    parser.add_argument("--layer", type=int, help="the layer read (default: the middle one)")
    parser.add_argument("--root", type=Path, help="project directory, reused when already built (default: a temporary one)")
    args = parser.parse_args()
    if args.root is not None:
        benchmark(args, args.root)
        return
    with tempfile.TemporaryDirectory(prefix="featstore-bench-") as folder:
        benchmark(args, Path(folder))


def benchmark(args: argparse.Namespace, root: Path) -> None:
    project = Project(root.resolve()) if (root / "store" / "catalog.duckdb").exists() else init_project(root)
    if not (project.store_dir / "catalog.duckdb").exists():
        import_sae_probes(project, None, [args.dataset], SplitParams())
    build_features(project, args.model, [args.dataset], BuildSettings(limit=args.limit))
    key = model_key(args.model)
    folder = split_path(project.features_dir, key, args.dataset, TEST)
    ref = SplitRef(key, args.dataset, TEST)
    with tempfile.TemporaryDirectory(prefix="unverified-") as scratch:
        compare(folder, ref, unverified_copy(folder, Path(scratch) / TEST), args.layer)


def compare(folder: Path, ref: SplitRef, plain: Path, layer: int | None) -> None:
    """Print the three verified / unverified ratios."""
    shape = zarr.open_group(folder, mode="r")["attn"].shape
    layer = shape[1] // 2 if layer is None else layer
    print(f"{ref}: attn {shape} (examples, layers, heads, tokens), layer {layer}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    cases = {
        "1. one layer through dask": lambda store: read_layer(store, layer, True),
        "2. one layer straight through zarr": lambda store: read_layer(store, layer, False),
        "3. first-token mass + entropy of one layer": lambda store: reduce_layer(store, layer),
    }
    for label, action in cases.items():
        unverified_s, verified_s = best_pair(lambda: action(str(plain)), lambda: action(open_split_store(folder, ref)))
        print(f"{label}: verified / unverified {verified_s / unverified_s:.3f}x  "
              f"[{verified_s * 1e3:.1f} ms vs {unverified_s * 1e3:.1f} ms]")


if __name__ == "__main__":
    main()
