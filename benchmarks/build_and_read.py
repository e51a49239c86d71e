"""Build and read one dataset with one model, timed against baselines run in the same process.

Prints ratios (absolute seconds beside them, for context only):
1. build time / bare forward time over the same length-sorted batches. The model is loaded once and
   not timed; "build" is `build_split` on train and test (tokenise, sort, forward with capture hooks,
   compress and write, register); "bare" is only the forward passes (logits_to_keep=1, attention mask,
   inference mode, no hooks, no writing) of (a) the bridge's `original_model`, whose modules the bridge
   has wrapped in place, and (b) a plain Hugging Face copy with the same weights and its default attention.
   The three alternate split by split; wall-clock and process CPU time are both reported.
2. padded tokens / real tokens of the build's batches, and of batches of 32 in example_id order.
3. bytes on disk (file sizes) per example against unpadded and padded-to-longest float16 bytes,
   and the compression ratio (uncompressed array bytes / bytes on disk).
4. time to compute first-token mass and entropy of one layer of the test split through the view,
   against the same reductions in numpy on an in-memory copy, and against the same on all layers.

Run: python benchmarks/build_and_read.py --model random:gpt2-medium --dataset 87_glue_cola --limit 128
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import torch
import xarray as xr
import zarr
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from featstore.api import open_store
from featstore.catalog.splits import SplitParams
from featstore.datasets.sae_probes import import_sae_probes
from featstore.extraction.batching import TokenizedSplit, order_split, token_batches
from featstore.extraction.build import BuildSettings, SplitJob, build_split, plan_jobs
from featstore.extraction.models import LoadedModel, load_model
from featstore.project import init_project
from featstore.store.layout import SplitShape, split_path

REPEATS = 5


def timed(action) -> np.ndarray:
    """Wall-clock and process CPU seconds of `action()` (CPU time is less sensitive to other work on the machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return np.array([time.perf_counter() - wall, time.process_time() - cpu])


def best_of(action) -> float:
    """The fastest wall-clock time of REPEATS runs."""
    return min(timed(action)[0] for _ in range(REPEATS))


def forward_all(hf_model: torch.nn.Module, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """The bare forward pass: right-padded ids and their attention mask, last logits only."""
    with torch.inference_mode():
        for ids, lengths in batches:
            mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)
            hf_model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), logits_to_keep=1)


def plain_copy(wrapped: torch.nn.Module) -> torch.nn.Module:
    """The same weights in an unwrapped Hugging Face model (the bridge nests each module as `_original_component`)."""
    plain = AutoModelForCausalLM.from_config(copy.deepcopy(wrapped.config), attn_implementation="sdpa").eval()
    weights = {key.replace("._original_component", ""): value for key, value in wrapped.state_dict().items()}
    expected = plain.state_dict().keys()
    plain.load_state_dict({key: weights[key] for key in expected}, strict=True)
    return plain


def split_batches(model: LoadedModel, job: SplitJob, batch_tokens: int) -> tuple[TokenizedSplit, list[slice]]:
    """A split in the build's row order and the build's batches: `token_batches` within each shard."""
    split = order_split(job.example_ids, model.encode(job.prompts), model.n_ctx, keep_first=model.prepend_bos)
    shape = SplitShape(len(split.example_ids), model.n_layers, model.n_heads, model.d_model, int(split.seq_lens.max()))
    return split, [rows for shard in range(shape.n_shards)
                   for rows in token_batches(split.seq_lens, shape.shard_rows(shard), batch_tokens)]


def padding_ratios(model: LoadedModel, jobs: list[SplitJob], batch_tokens: int) -> tuple[float, float]:
    """Padded / real tokens of the build's batches, and of batches of 32 in example_id order."""
    sorted_lengths, file_lengths = [], []
    for job in jobs:
        split, slices = split_batches(model, job, batch_tokens)
        sorted_lengths += [split.seq_lens[rows] for rows in slices]
        in_file_order = split.seq_lens[np.argsort(split.example_ids)]
        file_lengths += [in_file_order[i:i + 32] for i in range(0, len(in_file_order), 32)]
    real = sum(int(b.sum()) for b in sorted_lengths)
    return padded_tokens(sorted_lengths) / real, padded_tokens(file_lengths) / real


def padded_tokens(batches: list[np.ndarray]) -> int:
    """Tokens computed when each batch (an array of lengths) is padded to its longest."""
    return sum(len(lengths) * int(lengths.max()) for lengths in batches)


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def numpy_reductions(attn: np.ndarray, seq_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First-token mass and masked entropy of [example, ..., token] float16 rows, in plain numpy."""
    values = attn.astype(np.float32)
    valid = np.arange(attn.shape[-1]) < seq_len.reshape(-1, *[1] * (attn.ndim - 1))
    p = np.where(valid, values, 0.0)
    return values[..., 0], -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


def view_reductions(view: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """First-token mass and masked entropy of a view's attention, computed together (one read)."""
    return dask.compute(view.attn.masked.first(), view.attn.masked.entropy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=256, help="examples per split")
    parser.add_argument("--root", type=Path, help="project directory (default: a temporary one)")
    parser.add_argument("--batch-tokens", type=int, default=8192)
    args = parser.parse_args()
    if args.root is not None:
        benchmark(args, args.root)
        return
    with tempfile.TemporaryDirectory(prefix="featstore-bench-") as folder:
        benchmark(args, Path(folder))


def benchmark(args: argparse.Namespace, root: Path) -> None:
    """Build, then measure and print the four comparisons for `args.model` on `args.dataset`."""
    project = init_project(root)
    import_sae_probes(project, None, [args.dataset], SplitParams())
    settings = BuildSettings(limit=args.limit, batch_tokens=args.batch_tokens, overwrite=True)
    jobs = plan_jobs(project, [args.dataset], args.limit)

    started = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - started
    print(f"model {model.key}: {model.n_layers} layers x {model.n_heads} heads, d_model {model.d_model}, "
          f"loaded in {load_s:.1f} s (not timed below); load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; project {root}")

    # 1. Build vs bare forward over the build's own batches, split by split in turn so that other
    #    work on the machine weighs on all three alike.
    batches_by_job = []
    for job in jobs:
        split, slices = split_batches(model, job, args.batch_tokens)
        batches_by_job.append([(split.padded(rows), split.seq_lens[rows]) for rows in slices])
    sorted_batches = [batch for batches in batches_by_job for batch in batches]
    n_tokens = sum(int(lengths.sum()) for _, lengths in sorted_batches)
    wrapped, plain = model.bridge.original_model, plain_copy(model.bridge.original_model)
    for hf_model in (wrapped, plain):
        forward_all(hf_model, sorted_batches[:1])  # warm-up, untimed
    build, bare_wrapped, bare_plain = np.zeros(2), np.zeros(2), np.zeros(2)
    with torch.inference_mode():
        for job, batches in zip(jobs, batches_by_job):
            build += timed(lambda: build_split(project, model, job, settings, model.n_ctx, tqdm(disable=True)))
            bare_wrapped += timed(lambda: forward_all(wrapped, batches))
            bare_plain += timed(lambda: forward_all(plain, batches))
    print(f"1. build / bare forward ({len(sorted_batches)} batches, {n_tokens} real tokens, train+test), "
          f"wall-clock (CPU time): {build[0] / bare_wrapped[0]:.2f}x ({build[1] / bare_wrapped[1]:.2f}x) the "
          f"bridge-wrapped HF model without hooks, {build[0] / bare_plain[0]:.2f}x ({build[1] / bare_plain[1]:.2f}x) "
          f"a plain HF copy (sdpa)  [build {build[0]:.1f} s = {n_tokens / build[0]:.0f} tok/s; "
          f"wrapped {bare_wrapped[0]:.1f} s; plain {bare_plain[0]:.1f} s]")

    # 2. Padding of the length-sorted batches against batches of 32 in example_id order.
    whole_splits = plan_jobs(project, [args.dataset], None)
    for label, chosen in (("these examples", jobs), ("whole splits, tokenised only", whole_splits)):
        sorted_pad, file_pad = padding_ratios(model, chosen, args.batch_tokens)
        print(f"2. padded / real tokens ({label}, {sum(len(j.example_ids) for j in chosen)} ex.): "
              f"length-sorted batches {sorted_pad:.3f}, batches of 32 in example_id order {file_pad:.3f}")

    # 3. Bytes on disk against unpadded and padded float16.
    store_bytes = uncompressed = 0
    for job in jobs:
        folder = split_path(project.features_dir, model.key, job.dataset, job.split)
        group = zarr.open_group(folder, mode="r")
        lens = group["seq_len"][:].astype(np.int64)
        n, layers, heads, longest = group["attn"].shape
        attn_disk = disk_bytes(folder / "attn")
        stored = attn_disk + disk_bytes(folder / "resid") + disk_bytes(folder / "tokens")
        attn_unpadded = int(lens.sum()) * layers * heads * 2
        unpadded = attn_unpadded + n * layers * model.d_model * 2
        padded = n * layers * (heads * longest + model.d_model) * 2
        arrays_uncompressed = sum(group[name].nbytes for name in group.array_keys())
        store_bytes += disk_bytes(folder)
        uncompressed += arrays_uncompressed
        print(f"3. {job.split} ({n} ex., {lens.min()}..{lens.max()} tokens): {stored / n:.0f} B/example "
              f"(attn+resid+tokens) = {stored / unpadded:.3f}x unpadded fp16, "
              f"{stored / padded:.3f}x padded to longest; "
              f"attn alone {attn_disk / n:.0f} B/example = {attn_disk / attn_unpadded:.3f}x unpadded; "
              f"compression {arrays_uncompressed / disk_bytes(folder):.2f}x")
    print(f"   store compression ratio (uncompressed array bytes / bytes on disk, both splits): "
          f"{uncompressed / store_bytes:.2f}x  [{uncompressed / 1e6:.1f} MB -> {store_bytes / 1e6:.1f} MB]")

    # 4. One-layer reductions through the lazy view against numpy in memory and against all layers.
    layer = model.n_layers // 2
    store = open_store(project.root)
    open_s = timed(lambda: store.view(args.dataset, "test", layers=[layer]))[0]
    one, every = store.view(args.dataset, "test", layers=[layer]), store.view(args.dataset, "test")
    in_memory, lengths = one.attn.values, one.seq_len.values
    view_first, view_entropy = view_reductions(one)
    np_first, np_entropy = numpy_reductions(in_memory, lengths)
    np.testing.assert_allclose(view_first.values, np_first, rtol=1e-6)
    np.testing.assert_allclose(view_entropy.values, np_entropy, rtol=1e-4, atol=1e-5)
    one_s = best_of(lambda: view_reductions(one))
    numpy_s = best_of(lambda: numpy_reductions(in_memory, lengths))
    all_s = best_of(lambda: view_reductions(every))
    print(f"4. first+entropy of layer {layer}, test split (best of {REPEATS}): view / numpy in memory "
          f"{one_s / numpy_s:.1f}x; one layer / all {model.n_layers} layers {one_s / all_s:.3f} "
          f"(1/n_layers = {1 / model.n_layers:.3f})  "
          f"[view {one_s * 1e3:.1f} ms, numpy {numpy_s * 1e3:.1f} ms, all layers {all_s * 1e3:.1f} ms, "
          f"opening the view {open_s * 1e3:.0f} ms]; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
