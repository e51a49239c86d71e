"""Build and read one dataset with one model, timed against baselines run in the same process.

Prints ratios (absolute seconds beside them, for context only):
1. the build's tokens/s against the bare forward's tokens/s at its best batch shape for these lengths.
   The model is loaded once and not timed; "build" is `build_split` on train and test (tokenise, sort,
   forward with capture hooks, compress and write, register); "bare" is only the forward passes
   (logits_to_keep=1, no KV cache, attention mask, inference mode, no hooks, no writing) of a plain Hugging Face copy
   with the same weights and its default (SDPA) attention, over the same length-sorted rows in batches
   of each budget in BARE_BUDGETS (or --bare-budgets); the fastest budget is the reference. Tokens/s counts
   real tokens.
   Build and bare runs alternate split by split; `--rounds` repeats them.
2. with `--peer`: a sae-probes-style extractor (`PeerExtractor`: eager attention with output_attentions, batches
   of 32 in file order, last rows to the host, one `torch.save` per dataset split) alternating with the build in
   the same loop: build time, tokens computed (padded), bytes on disk, and opening plus reading one layer of the
   test split (a fresh `open_store(root).view(...)` against the peer's `torch.load`).
3. padded tokens / real tokens of the build's batches, and of batches of 32 in example_id order.
4. bytes on disk (file sizes) per example against unpadded and padded-to-longest float16 bytes,
   and the compression ratio (uncompressed array bytes / bytes on disk).
5. time to compute first-token mass and entropy of one layer of the test split through the view,
   against the same reductions in numpy on an in-memory copy, and against the same on all layers.

Run: PYTHONPATH=. python benchmarks/build_and_read.py --model random:gpt2-medium --dataset 87_glue_cola --limit 128
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import dask
import numpy as np
import torch
import xarray as xr
import zarr
from transformers import AutoModelForCausalLM

from benchmarks.host_path import folder_bytes
from featstore.api import open_store
from featstore.catalog.names import catalog_dataset_names
from featstore.catalog.splits import SplitParams
from featstore.datasets.sae_probes import import_sae_probes
from featstore.extraction.batching import truncate_left
from featstore.extraction.build import (
    CPU_BATCH_TOKENS,
    SplitJob,
    build_split,
    default_batch_slack,
    order_job,
    plan_jobs,
)
from featstore.extraction.capture import default_capture
from featstore.extraction.captures import CAPTURES
from featstore.extraction.model_sources import parse_model_spec
from featstore.extraction.models import LoadedModel
from featstore.extraction.plan import BuildSettings, split_batches
from featstore.progress import TokenProgress
from featstore.project import init_project
from featstore.views.view import forget_opened_views

REPEATS = 5
BARE_BUDGETS = (2048, 8192, 32768)
PEER_BATCH = 32


def timed(action) -> np.ndarray:
    """Wall-clock and process CPU seconds of `action()` (CPU time is less sensitive to other work on the machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return np.array([time.perf_counter() - wall, time.process_time() - cpu])


def best_of(action, repeats: int = REPEATS) -> float:
    """The fastest wall-clock time of `repeats` runs."""
    return min(timed(action)[0] for _ in range(repeats))


def forward_all(hf_model: torch.nn.Module, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """The bare forward pass: right-padded ids and their attention mask, last logits only."""
    with torch.inference_mode():
        for ids, lengths in batches:
            mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)
            hf_model(
                input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), logits_to_keep=1, use_cache=False
            )


def plain_copy(wrapped: torch.nn.Module, attention: str = "sdpa") -> torch.nn.Module:
    """The same weights in an unwrapped Hugging Face model (the bridge nests each module as `_original_component`)."""
    plain = AutoModelForCausalLM.from_config(copy.deepcopy(wrapped.config), attn_implementation=attention).eval()
    weights = {key.replace("._original_component", ""): value for key, value in wrapped.state_dict().items()}
    expected = plain.state_dict().keys()
    plain.load_state_dict({key: weights[key] for key in expected}, strict=True)
    return plain


def padding_ratios(
    model: LoadedModel, jobs: list[SplitJob], batch_tokens: int, slack: float, max_len: int
) -> tuple[float, float]:
    """Padded / real tokens of the build's batches, and of batches of 32 in example_id order."""
    sorted_lengths, file_lengths = [], []
    for job in jobs:
        split = order_job(model, job, max_len)
        sorted_lengths += [split.seq_lens[rows] for rows in split_batches(split, batch_tokens, slack)]
        in_file_order = split.seq_lens[np.argsort(split.example_ids)]
        file_lengths += [in_file_order[i : i + PEER_BATCH] for i in range(0, len(in_file_order), PEER_BATCH)]
    real = sum(int(b.sum()) for b in sorted_lengths)
    return padded_tokens(sorted_lengths) / real, padded_tokens(file_lengths) / real


def padded_tokens(batches: list[np.ndarray]) -> int:
    """Tokens computed when each batch (an array of lengths) is padded to its longest."""
    return sum(len(lengths) * int(lengths.max()) for lengths in batches)


def published_folder(project, model: str, dataset: str, split: str) -> Path:
    """The folder of the split version the catalog points to."""
    path = open_store(project.root).sql(
        "SELECT path FROM feature_splits WHERE model = ? AND dataset = ? AND split = ?", [model, dataset, split]
    )["path"][0]
    return project.store_dir / path


class PeerExtractor:
    """A sae-probes-style extractor: the same weights in a plain Hugging Face model with eager attention, batches
    of 32 in file order, right-padded with their attention mask, `output_attentions` and `output_hidden_states`,
    each example's last-token rows copied to the host as float16, and one `torch.save` per dataset split (attention
    rows padded to the split's longest, and residuals, of every layer)."""

    def __init__(self, model: LoadedModel, out: Path, max_len: int):
        self.model, self.out, self.max_len = model, out, max_len
        self.hf_model = plain_copy(model.bridge.original_model, "eager")
        self.tokens_computed = 0

    def extract(self, job: SplitJob) -> None:
        ids = [truncate_left(row, self.max_len, self.model.prepend_bos) for row in self.model.encode(job.prompts)]
        longest = max(len(row) for row in ids)
        attn, resid = [], []
        with torch.inference_mode():
            for start in range(0, len(ids), PEER_BATCH):
                batch = ids[start : start + PEER_BATCH]
                lengths = torch.as_tensor([len(row) for row in batch])
                tokens = torch.zeros((len(batch), int(lengths.max())), dtype=torch.long)
                for i, row in enumerate(batch):
                    tokens[i, : len(row)] = torch.as_tensor(row)
                mask = (torch.arange(tokens.shape[1])[None, :] < lengths[:, None]).long()
                self.tokens_computed += tokens.numel()
                output = self.hf_model(
                    input_ids=tokens,
                    attention_mask=mask,
                    output_attentions=True,
                    output_hidden_states=True,
                    logits_to_keep=1,
                    use_cache=False,
                )
                rows, last = torch.arange(len(batch)), lengths - 1
                patterns = torch.stack([layer[rows, :, last] for layer in output.attentions], 1)  # [B, L, H, T]
                attn.append(torch.nn.functional.pad(patterns, (0, longest - patterns.shape[-1])).to(torch.float16))
                resid.append(
                    torch.stack([hidden[rows, last] for hidden in output.hidden_states[1:]], 1).to(torch.float16)
                )
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save({"attn": torch.cat(attn), "resid": torch.cat(resid)}, self.out / f"{job.dataset}_{job.split}.pt")

    def read_layer(self, dataset: str, split: str, layer: int) -> np.ndarray:
        return torch.load(self.out / f"{dataset}_{split}.pt")["attn"][:, layer].numpy()


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
    parser.add_argument("--max-len", type=int, help="truncate prompts to this many tokens (default: the context)")
    parser.add_argument("--root", type=Path, help="project directory (default: a temporary one)")
    parser.add_argument("--batch-tokens", type=int, default=CPU_BATCH_TOKENS)
    parser.add_argument("--rounds", type=int, default=1, help="alternations of build, peer and bare forwards")
    parser.add_argument("--peer", action="store_true", help="also run the sae-probes-style extractor")
    parser.add_argument(
        "--bare-budgets",
        type=int,
        nargs="+",
        default=list(BARE_BUDGETS),
        help="batch budgets of the bare forward (the fastest is the reference; fewer for a slow model)",
    )
    parser.add_argument("--capture", choices=list(CAPTURES), help="the build's capture (default: the model's)")
    args = parser.parse_args()
    if args.root is not None:
        benchmark(args, args.root)
        return
    with tempfile.TemporaryDirectory(prefix="featstore-bench-") as folder:
        benchmark(args, Path(folder))


def benchmark(args: argparse.Namespace, root: Path) -> None:
    """Build, then measure and print the comparisons for `args.model` on `args.dataset`."""
    project = init_project(root)
    if not project.catalog_path.exists() or args.dataset not in catalog_dataset_names(project).names:
        import_sae_probes(project, None, [args.dataset], SplitParams())  # a project that holds it is used offline
    jobs = plan_jobs(project, [args.dataset], args.limit)

    started = time.perf_counter()
    model = parse_model_spec(args.model).load()
    load_s = time.perf_counter() - started
    slack = default_batch_slack(model.device)
    settings = BuildSettings(
        limit=args.limit,
        batch_tokens=args.batch_tokens,
        batch_slack=slack,
        overwrite=True,
        max_len=args.max_len,
        capture=args.capture,
    )
    max_len = args.max_len or model.n_ctx
    print(
        f"model {model.key}: {model.n_layers} layers x {model.n_heads} heads, d_model {model.d_model}, "
        f"loaded in {load_s:.1f} s (not timed below); load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; project {root}",
        flush=True,
    )

    # 1 and 2. Build, peer and bare forwards alternate split by split, so other work on the machine
    #    weighs on all of them alike.
    splits = [order_job(model, job, max_len) for job in jobs]
    n_tokens = sum(int(split.seq_lens.sum()) for split in splits)
    shaped = {
        budget: [
            [(split.padded(rows), split.seq_lens[rows]) for rows in split_batches(split, budget, slack)]
            for split in splits
        ]
        for budget in args.bare_budgets
    }
    plain = plain_copy(model.bridge.original_model)
    forward_all(plain, shaped[args.bare_budgets[0]][0][:1])  # warm-up, untimed
    peer = PeerExtractor(model, root / "peer", max_len) if args.peer else None
    build, peer_s, bare = np.zeros(2), np.zeros(2), {budget: np.zeros(2) for budget in args.bare_budgets}
    quiet = TokenProgress(np.zeros(0), "build", io.StringIO())
    with torch.inference_mode():
        for _ in range(args.rounds):
            for i, job in enumerate(jobs):
                build += timed(partial(build_split, project, model, job, settings, max_len, quiet))
                if peer is not None:
                    peer_s += timed(partial(peer.extract, job))
                for budget in args.bare_budgets:
                    bare[budget] += timed(partial(forward_all, plain, shaped[budget][i]))
    best = min(args.bare_budgets, key=lambda budget: bare[budget][0])
    build_rate, bare_rate = n_tokens * args.rounds / build[0], n_tokens * args.rounds / bare[best][0]
    per_budget = ", ".join(f"{budget}: {n_tokens * args.rounds / bare[budget][0]:.0f}" for budget in args.bare_budgets)
    print(
        f"1. build tokens/s / bare forward tokens/s at its best batch budget ({len(jobs)} splits, "
        f"{n_tokens} real tokens, {n_tokens / sum(len(s.seq_lens) for s in splits):.1f} per example, "
        f"{args.rounds} round(s)): {build_rate / bare_rate:.2f}x wall-clock "
        f"({bare[best][1] / build[1]:.2f}x CPU time)  [build {build_rate:.0f} tok/s at --batch-tokens "
        f"{args.batch_tokens}, capture {args.capture or default_capture(model)}; bare plain HF (sdpa) tok/s by "
        f"batch budget {per_budget}]",
        flush=True,
    )

    layer = model.n_layers // 2
    store = open_store(project.root)
    if peer is not None:
        ours_tokens = sum(
            padded_tokens([split.seq_lens[rows] for rows in split_batches(split, args.batch_tokens, slack)])
            for split in splits
        )
        ours_bytes = sum(folder_bytes(published_folder(project, model.key, j.dataset, j.split)) for j in jobs)
        peer_bytes = folder_bytes(peer.out)

        def read() -> np.ndarray:
            return open_store(root).view(args.dataset, "test", layers=[layer]).attn.values

        first_read = best_of(lambda: (forget_opened_views(), read()))
        ours_read = best_of(read)
        peer_read = best_of(lambda: peer.read_layer(args.dataset, "test", layer))
        np.testing.assert_allclose(  # the same rows (the peer's in file order), up to float16 rounding
            store.view(args.dataset, "test", layers=[layer]).sortby("example_id").attn.values[:, 0].astype(np.float32),
            peer.read_layer(args.dataset, "test", layer).astype(np.float32),
            rtol=0,
            atol=2e-3,
        )
        peer_tokens = peer.tokens_computed // args.rounds
        print(
            f"2. featstore / sae-probes-style peer ({sum(len(j.example_ids) for j in jobs)} examples): "
            f"build time {build[0] / peer_s[0]:.2f}x ({build[1] / peer_s[1]:.2f}x CPU time); "
            f"tokens computed {ours_tokens / peer_tokens:.2f}x; bytes on disk {ours_bytes / peer_bytes:.2f}x; "
            f"opening and reading layer {layer} of the test split {ours_read / peer_read:.2f}x "
            f"({first_read / peer_read:.2f}x the first time in a process)  "
            f"[build {build[0]:.1f} s vs {peer_s[0]:.1f} s; tokens {ours_tokens} vs {peer_tokens}; "
            f"{ours_bytes / 1e6:.1f} MB vs {peer_bytes / 1e6:.1f} MB; read {ours_read * 1e3:.0f} ms "
            f"({first_read * 1e3:.0f} ms first) vs {peer_read * 1e3:.0f} ms]",
            flush=True,
        )

    # 3. Padding of the length-sorted batches against batches of 32 in example_id order.
    whole_splits = plan_jobs(project, [args.dataset], None)
    for label, chosen in (("these examples", jobs), ("whole splits, tokenised only", whole_splits)):
        sorted_pad, file_pad = padding_ratios(model, chosen, args.batch_tokens, slack, max_len)
        print(
            f"3. padded / real tokens ({label}, {sum(len(j.example_ids) for j in chosen)} ex.): "
            f"length-sorted batches {sorted_pad:.3f}, batches of 32 in example_id order {file_pad:.3f}"
        )

    # 4. Bytes on disk against unpadded and padded float16.
    store_bytes = uncompressed = 0
    for job in jobs:
        folder = published_folder(project, model.key, job.dataset, job.split)
        group = zarr.open_group(folder, mode="r")
        lens = group["seq_len"][:].astype(np.int64)
        n, layers, heads, longest = group["attn"].shape
        attn_disk = folder_bytes(folder / "attn")
        stored = attn_disk + folder_bytes(folder / "resid") + folder_bytes(folder / "tokens")
        attn_unpadded = int(lens.sum()) * layers * heads * 2
        unpadded = attn_unpadded + n * layers * model.d_model * 2
        padded = n * layers * (heads * longest + model.d_model) * 2
        arrays_uncompressed = sum(group[name].nbytes for name in group.array_keys())
        store_bytes += folder_bytes(folder)
        uncompressed += arrays_uncompressed
        print(
            f"4. {job.split} ({n} ex., {lens.min()}..{lens.max()} tokens): {stored / n:.0f} B/example "
            f"(attn+resid+tokens) = {stored / unpadded:.3f}x unpadded fp16, "
            f"{stored / padded:.3f}x padded to longest; "
            f"attn alone {attn_disk / n:.0f} B/example = {attn_disk / attn_unpadded:.3f}x unpadded; "
            f"compression {arrays_uncompressed / folder_bytes(folder):.2f}x"
        )
    print(
        f"   store compression ratio (uncompressed array bytes / bytes on disk, both splits): "
        f"{uncompressed / store_bytes:.2f}x  [{uncompressed / 1e6:.1f} MB -> {store_bytes / 1e6:.1f} MB]"
    )

    # 5. One-layer reductions through the lazy view against numpy in memory and against all layers.
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
    print(
        f"5. first+entropy of layer {layer}, test split (best of {REPEATS}): view / numpy in memory "
        f"{one_s / numpy_s:.1f}x; one layer / all {model.n_layers} layers {one_s / all_s:.3f} "
        f"(1/n_layers = {1 / model.n_layers:.3f})  "
        f"[view {one_s * 1e3:.1f} ms, numpy {numpy_s * 1e3:.1f} ms, all layers {all_s * 1e3:.1f} ms, "
        f"opening the view {open_s * 1e3:.0f} ms]; load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
