"""`featstore build`: run a model over the catalog's splits and store what the probes read.

For each split: tokenise, truncate from the left, sort by length, then run length-homogeneous
batches (planned over the whole split, so short rows fill a batch across shard boundaries) through
the model and hand each completed shard to a queue of writer threads, so compression and disk I/O overlap
the next forward pass (on a GPU, each batch's rows also cross to the host while the next batch runs, and the
next split is tokenised and sorted while this one runs). A split whose forward passes have all run is finished
in the background (its last shards written, then published atomically and registered in the catalog) while the
next split's forward passes run, so the model never waits for the writers between splits. Memory is bounded by
two batches and the shards they touch, plus the few queued or being written for at most two splits. Killed builds
resume at the shards not yet written, with identical batches. With `cluster`, the shards
are extracted and written by the workers of a dask cluster instead (`featstore.extraction.distributed_build`);
planning, publishing and the catalog stay here.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pandas as pd
import torch
from transformers.utils import logging as transformers_logging

from featstore.catalog.database import catalog_writer
from featstore.catalog.datasets import indexed_datasets, split_examples
from featstore.catalog.features import (
    RecordedSplit,
    record_status,
    recorded_path,
    recorded_splits,
    register_split,
    repoint_split,
)
from featstore.catalog.names import DatasetNames
from featstore.catalog.splits import FEATURE_SPLITS, hash_order
from featstore.cluster import usable_cpus
from featstore.digests import json_digest
from featstore.errors import FeatstoreError
from featstore.extraction.batching import TokenizedSplit, order_split
from featstore.extraction.capture import HostCopy, check_capture, launch_capture
from featstore.extraction.model_sources import ParsedModelSpec, parse_model_spec
from featstore.extraction.models import LoadedModel, release_model
from featstore.extraction.plan import BuildSettings, ShardWriting, SplitPlan, split_batches
from featstore.extraction.shards import ShardAssembler
from featstore.progress import TokenProgress
from featstore.project import Project
from featstore.session import mirror
from featstore.session.holding import holding_store
from featstore.store.integrity import Damage, SplitRef, verify_split
from featstore.store.layout import SplitShape, split_prefix, tokenizer_path
from featstore.store.tokenizers import save_tokenizer
from featstore.store.writer import ShardQueue, SplitWriter, retire_versions

CPU_BATCH_TOKENS = 2048  # fastest measured on CPU: gpt2-medium 286 tok/s vs 245 at 8,192; smollm2 flat
# padding a batch may add (`token_batches`): on CPU the forward's speed is flat from 512 to 2,048 tokens a batch, so
# padding is pure loss (smollm2, 87_glue_cola, 2,048 tokens: 1,058 real tok/s at 0.05 vs 985 at 0.25, 1.003 vs 1.119
# padded per real token); a GPU gains more from larger batches, its value is the one measured there
CPU_BATCH_SLACK, GPU_BATCH_SLACK = 0.05, 0.25
LEGACY_BATCH_SLACK = 0.25  # what splits recorded before the slack was named were batched with
GPU_BATCH_TOKENS = (8192, 65536)  # the range a GPU's budget is chosen in, from its free memory
GPU_MEMORY_SHARE = 0.5  # of the free memory, for one batch's activations (the rest: allocator slack, the writer)
MAX_WRITERS = 8  # writer threads at most: each holds a shard (100 MB of gpt2-medium rows at 1,024 tokens)
_TOKENIZING = threading.Lock()  # a fast tokenizer is not safe to share between threads (builds on a cluster)


@dataclass(frozen=True)
class SplitJob:
    """One dataset split to extract: its examples in catalog order."""

    dataset: str
    split: str
    fingerprint: str
    example_ids: np.ndarray
    prompts: list[str]


def build_features(
    project: Project, model_spec: str, datasets: list[str] | None, settings: BuildSettings, cluster: str | None = None
) -> int:
    """Extract every requested split not already built with the same settings; returns how many were built.
    With `cluster` (a scheduler address or `local:N`), dask workers extract and write the shards."""
    parsed = parse_model_spec(model_spec)
    key = parsed.key
    settings = replace(settings, source=parsed.fingerprint)
    with holding_store(project, "featstore build"):
        jobs = plan_jobs(project, datasets, settings.limit)
        recorded = _recorded_splits(project, key)
        pending = [job for job in jobs if _needs_build(recorded.get((job.dataset, job.split)), key, job, settings)]
        repairs = _damaged_shards(project, key, jobs, recorded) if settings.repair and not settings.overwrite else {}
        pending += [job for job in jobs if (job.dataset, job.split) in repairs]
        if not pending:
            return 0
        transformers_logging.disable_progress_bar()
        with _shard_writing(parsed, settings, cluster) as (model, write_shards, at_once):
            settings = replace(
                settings,
                batch_tokens=settings.batch_tokens or default_batch_tokens(model),
                batch_slack=default_batch_slack(model.device) if settings.batch_slack is None else settings.batch_slack,
            )
            save_tokenizer(model.tokenizer, tokenizer_path(project.tokenizers_dir, key))
            max_len = _resolve_max_len(model, settings)
            with (
                TokenProgress(_planned_lengths(model, pending, max_len), f"build {key}") as progress,
                SplitPlanner(model, pending, max_len) as planner,
                SplitFinisher() as finisher,
            ):
                builds = []
                for job in pending:
                    repair = repairs.get((job.dataset, job.split))
                    builds.append(
                        partial(
                            build_split,
                            project,
                            model,
                            job,
                            _repair_settings(settings, recorded, job) if repair else settings,
                            max_len,
                            progress,
                            repair.shards if repair else None,
                            write_shards,
                            planner,
                            finisher if at_once == 1 else None,
                        )
                    )
                _run_builds(builds, at_once)
    return len(pending)


def _planned_lengths(model: LoadedModel, jobs: list[SplitJob], max_len: int) -> np.ndarray:
    """The token count of every example the jobs will run, after truncation: what the build's progress counts
    (only lengths are kept, so memory does not grow with the datasets)."""
    with _TOKENIZING:
        return np.concatenate([np.minimum([len(ids) for ids in model.encode(job.prompts)], max_len) for job in jobs])


class SplitPlanner:
    """Tokenises and sorts the splits one ahead of the one being built, in a background thread, so the model does
    not wait on tokenising between splits and at most two splits' tokens are held."""

    def __init__(self, model: LoadedModel, jobs: list[SplitJob], max_len: int):
        self.model, self.jobs, self.max_len = model, jobs, max_len
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner")
        self.ahead: dict[int, Future] = {}
        self.lock = threading.Lock()

    def tokenized(self, job: SplitJob) -> TokenizedSplit:
        """The job's tokenised split (computed ahead when it was the next one), starting on the job after it."""
        index = self.jobs.index(job)
        with self.lock:
            planned = self.ahead.pop(index, None) or self._submit(index)
            if index + 1 < len(self.jobs) and index + 1 not in self.ahead:
                self.ahead[index + 1] = self._submit(index + 1)
        return planned.result()

    def _submit(self, index: int) -> Future:
        return self.pool.submit(order_job, self.model, self.jobs[index], self.max_len)

    def __enter__(self) -> SplitPlanner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for planned in self.ahead.values():
            planned.cancel()
        self.pool.shutdown(wait=True)


class SplitFinisher:
    """Finishes built splits in one background thread (waits for their last shards, publishes, registers, retires
    old versions) so the next split's forward passes start at once instead of the GPU waiting for the writers. One
    split finishes at a time, so at most two splits' queued shards are held. Leaving it waits for the last split;
    a failure is raised at the next split handed over, or on leaving."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="split-finisher")
        self._last: Future | None = None

    def submit(self, finish: Callable[[], None]) -> None:
        """Finish a split in the background, after the one before it is finished (raising its failure)."""
        self.wait()
        self._last = self._pool.submit(finish)

    def wait(self) -> None:
        """Wait for the split being finished, raising its failure."""
        last, self._last = self._last, None
        if last is not None:
            last.result()

    def __enter__(self) -> SplitFinisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if exc_info[0] is None:
                self.wait()
            else:  # the split whose forward passes all ran is still published; the error in flight is the one raised
                with contextlib.suppress(Exception):
                    self.wait()
        finally:
            self._pool.shutdown(wait=True)


def default_batch_tokens(model: LoadedModel) -> int:
    """Padded tokens per batch when --batch-tokens is not given: 2,048 on CPU; on a GPU, the power of two in
    `GPU_BATCH_TOKENS` that fits half its free memory at the worst case of a padded token: float32 activations of
    one layer (about 16 x d_model) plus a row of every head's [T, T] pattern at full context (the pattern capture)."""
    if model.device.type != "cuda":
        return CPU_BATCH_TOKENS
    free_bytes, _ = torch.cuda.mem_get_info(model.device)
    bytes_per_token = 4 * (16 * model.d_model + model.n_heads * model.n_ctx)
    fitting = int(free_bytes * GPU_MEMORY_SHARE // bytes_per_token)
    smallest, largest = GPU_BATCH_TOKENS
    return int(np.clip(2 ** int(np.log2(max(fitting, 1))), smallest, largest))


def default_batch_slack(device: torch.device) -> float:
    """The padding a batch may add when not given: `CPU_BATCH_SLACK` on CPU, `GPU_BATCH_SLACK` on a GPU."""
    return GPU_BATCH_SLACK if device.type == "cuda" else CPU_BATCH_SLACK


def default_writers() -> int:
    """Shard-writer threads when BuildSettings.writers is not given: one per usable core, at most MAX_WRITERS."""
    return max(1, min(usable_cpus(), MAX_WRITERS))


def order_job(model: LoadedModel, job: SplitJob, max_len: int) -> TokenizedSplit:
    """Tokenise a split's prompts and sort them by length (truncated from the left to `max_len`)."""
    with _TOKENIZING:
        encoded = model.encode(job.prompts)
    return order_split(job.example_ids, encoded, max_len, keep_first=model.prepend_bos)


def _run_builds(builds: list[Callable[[], None]], at_once: int) -> None:
    """Run the split builds in order, or `at_once` at a time in threads that each wait on a cluster (the
    catalog writer and the mirror take turns); the first failure is raised once the others have stopped, a
    Ctrl-C at once (leaving the cluster's exit to stop the threads)."""
    if at_once == 1:
        for build in builds:
            build()
        return
    pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="split")
    try:
        for running in [pool.submit(build) for build in builds]:
            running.result()
    except KeyboardInterrupt:  # do not wait for the running splits: the cluster's exit cancels their tasks
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@contextmanager
def _shard_writing(
    parsed: ParsedModelSpec, settings: BuildSettings, cluster: str | None
) -> Iterator[tuple[LoadedModel, ShardWriting, int]]:
    """The model (for its tokenizer and shape), how shards get written and how many splits to build at once:
    one at a time here with the model loaded in this process, or one per worker on a cluster (the model
    described by a worker, never loaded here)."""
    if cluster is not None:
        from featstore.extraction.distributed_build import cluster_shard_writing

        with cluster_shard_writing(cluster, parsed.text, settings) as writing:
            yield writing
        return
    model = parsed.load(device=settings.device, dtype=settings.dtype)
    try:
        yield model, write_locally, 1
    finally:
        release_model(model)


def plan_jobs(project: Project, datasets: list[str] | None, limit: int | None) -> list[SplitJob]:
    """The train and test splits of the requested datasets (all indexed ones by default), from the catalog."""
    if not project.catalog_path.exists():
        raise FeatstoreError(
            "the catalog is empty; run `featstore datasets import-sae-probes` or `featstore datasets clean`"
        )
    with catalog_writer(project) as con:
        indexed = indexed_datasets(con)
        known = {row.name: (row.fingerprint, json.loads(row.split_params)) for row in indexed.itertuples()}
        names = DatasetNames.from_frame(indexed).resolve_all(datasets) if datasets else list(known)
        jobs = []
        for name in names:
            fingerprint, split_params = known[name]
            for split in FEATURE_SPLITS:
                rows = split_examples(con, name, split)
                if limit is not None:
                    rows = limited(rows, name, limit, split_params["seed"])
                jobs.append(SplitJob(name, split, fingerprint, rows["example_id"].to_numpy(), rows["prompt"].tolist()))
    return jobs


def limited(rows: pd.DataFrame, dataset: str, limit: int, seed: int) -> pd.DataFrame:
    """The first `limit` examples in the split's hash order, alternating classes so a capped split stays balanced."""
    rank = np.empty(len(rows), dtype=np.int64)
    rank[hash_order(dataset, rows["row"].to_numpy(), seed)] = np.arange(len(rows))
    ordered = rows.assign(rank=rank).sort_values("rank")
    ordered["class_rank"] = ordered.groupby("label").cumcount()
    chosen = ordered.sort_values(["class_rank", "label"]).head(limit)
    return rows.loc[sorted(chosen.index)]


def build_split(
    project: Project,
    model: LoadedModel,
    job: SplitJob,
    settings: BuildSettings,
    max_len: int,
    progress: TokenProgress,
    repair: frozenset[int] | None = None,
    write_shards: ShardWriting | None = None,
    planner: SplitPlanner | None = None,
    finisher: SplitFinisher | None = None,
) -> None:
    """Extract one split (resuming a killed build at the shards not yet written), publish it, register it; with
    `repair`, write only those shards of the published split again (its catalog rows stay as they are).
    `write_shards` produces the shards (default: `write_locally`); `planner` tokenises the split ahead; `finisher`
    publishes and registers it in the background once its forward passes have run."""
    started = time.perf_counter()
    ref = SplitRef(model.key, job.dataset, job.split)
    prefix = split_prefix(model.key, job.dataset, job.split)
    tokenized = planner.tokenized(job) if planner is not None else order_job(model, job, max_len)
    shape = SplitShape(
        len(tokenized.example_ids),
        model.n_layers,
        model.n_heads,
        model.d_model,
        int(tokenized.seq_lens.max()),
        settings.chunking,
    )
    capture = check_capture(model, settings.capture)
    attrs = {
        "model": model.identity,
        "dataset": job.dataset,
        "split": job.split,
        "settings": {
            **settings.stored(),
            "max_len_applied": max_len,
            "batch_tokens": settings.batch_tokens,
            "batch_slack": settings.batch_slack,
            "capture": capture,
        },
        "dataset_fingerprint": job.fingerprint,
    }
    build_key = json_digest(
        [
            model.identity,
            settings.stored(),
            settings.batch_tokens,
            settings.batch_slack,
            capture,
            max_len,
            job.fingerprint,
            tokenized.example_ids.tolist(),
            shape.chunking,
        ]
    )
    writer = None
    if repair is not None:
        with catalog_writer(project) as con:
            recorded = recorded_path(con, ref)
        writer = SplitWriter.repairing(project.store, prefix, recorded, shape, build_key, repair)
    if writer is None:
        repair = None
        writer = SplitWriter(project.store, prefix, shape, attrs, build_key)
        with catalog_writer(project) as con:
            record_status(con, ref, "building", shape, writer.key, attrs["settings"])
        if not writer.shards_written:
            writer.write_index(tokenized.example_ids, tokenized.seq_lens)
    writing = (write_shards or write_locally)(model, SplitPlan(tokenized, shape, writer, capture), settings, progress)

    def finish() -> None:
        if writing is not None:
            writing.close()
        published = writer.publish()
        if repair is None:
            _register(project, ref, tokenized, shape, published, attrs["settings"], time.perf_counter() - started)
        else:
            with catalog_writer(project) as con:  # its rows and probe results stay
                repoint_split(con, ref, published)
        if project.store_is_remote:  # the store's catalog points to the new version before older ones are deleted
            mirror.push(project)
        retire_versions(project.store, prefix, published)

    if finisher is None:
        finish()
        return
    try:
        finisher.submit(finish)
    except BaseException:
        if writing is not None:
            writing.abandon()
        raise


def write_locally(model: LoadedModel, plan: SplitPlan, settings: BuildSettings, progress: TokenProgress) -> ShardQueue:
    """Run the batches holding pending rows through the model in this process, handing each completed shard to
    the writer threads so compression and disk I/O overlap the next forward passes; returns the queue of the shards
    still being written (the caller closes it). A batch's rows are gathered once the next batch is launched (on a
    GPU its copy to the host overlaps that forward)."""
    tokenized, writer = plan.tokenized, plan.writer
    assembler = ShardAssembler(tokenized, plan.shape, writer.pending_shards)
    queue = ShardQueue(writer, settings.writers or default_writers())
    try:
        with torch.inference_mode():
            launched: tuple[slice, HostCopy] | None = None
            for batch in split_batches(tokenized, settings.batch_tokens, settings.batch_slack):
                if not assembler.rows_in(batch):
                    progress.skip(tokenized.seq_lens[batch])  # written by an earlier, killed build
                    continue
                copy = launch_capture(model, tokenized.padded(batch), tokenized.seq_lens[batch], strategy=plan.capture)
                if launched is not None:
                    _gather(tokenized, assembler, queue, progress, *launched)
                launched = (batch, copy)
            if launched is not None:
                _gather(tokenized, assembler, queue, progress, *launched)
    except BaseException:
        queue.abandon()
        raise
    return queue


def _gather(
    tokenized: TokenizedSplit,
    assembler: ShardAssembler,
    queue: ShardQueue,
    progress: TokenProgress,
    batch: slice,
    copy: HostCopy,
) -> None:
    """Wait for a launched batch's rows, add them to their shards and queue the shards they complete."""
    batch_attn, batch_resid = copy.result()
    for shard, arrays in assembler.add(batch, batch_attn, batch_resid):
        queue.put(shard, *arrays)
    queue.record_written()
    progress.done(tokenized.seq_lens[batch])


def _register(
    project: Project,
    split: SplitRef,
    tokenized: TokenizedSplit,
    shape: SplitShape,
    version: str,
    settings: dict,
    build_seconds: float,
) -> None:
    """Record the split's rows and mark it complete (pointing to its published `version`) with this run's wall
    time, in one catalog transaction."""
    rows = pd.DataFrame(
        {
            "model": split.model,
            "dataset": split.dataset,
            "split": split.split,
            "example_id": tokenized.example_ids,
            "array_row": np.arange(len(tokenized.example_ids), dtype=np.int32),
            "seq_len": tokenized.seq_lens,
            "n_tokens_source": tokenized.source_lens,
            "truncated": tokenized.truncated,
        }
    )
    with catalog_writer(project) as con:
        register_split(con, split, rows, shape, version, settings, build_seconds)


def _recorded_splits(project: Project, key: str) -> dict[tuple[str, str], RecordedSplit]:
    """Every split recorded for this model key, by (dataset, split)."""
    with catalog_writer(project) as con:
        return recorded_splits(con, key)


def _needs_build(found: RecordedSplit | None, key: str, job: SplitJob, settings: BuildSettings) -> bool:
    """False when the split is complete with the same settings; refuses to mix settings without --overwrite."""
    if settings.overwrite:
        return True
    if found is None or found.status != "complete":
        return True
    recorded = json.loads(found.settings)
    stored = {k: recorded.get(k) for k in settings.stored()}
    if settings.max_len == recorded.get("max_len_applied") and stored["max_len"] is None:
        stored["max_len"] = settings.max_len  # an explicit --max-len equal to the context that was applied
    if stored != settings.stored():
        raise FeatstoreError(
            f"{job.dataset}/{job.split} already has {key} features built with {stored}, not {settings.stored()}; "
            + (
                "repair them with the options they were built with"
                if settings.repair
                else "pass --overwrite to rebuild them"
            )
        )
    return False


def _damaged_shards(
    project: Project, key: str, jobs: list[SplitJob], recorded: dict[tuple[str, str], RecordedSplit]
) -> dict[tuple[str, str], Damage]:
    """The complete splits among `jobs` that fail verification, with what rebuilds each."""
    damaged = {}
    for job in jobs:
        found = recorded.get((job.dataset, job.split))
        if found is not None and found.status == "complete":
            damage = verify_split(project.store, found.path, SplitRef(key, job.dataset, job.split))
            if damage is not None:
                damaged[(job.dataset, job.split)] = damage
    return damaged


def _repair_settings(
    settings: BuildSettings, recorded: dict[tuple[str, str], RecordedSplit], job: SplitJob
) -> BuildSettings:
    """The settings a split was built with, batches and capture included, so its repaired shards come out
    identical (splits recorded before captures and the batch slack were named were built with the pattern capture
    and `LEGACY_BATCH_SLACK`)."""
    built = json.loads(recorded[(job.dataset, job.split)].settings)
    return replace(
        settings,
        batch_tokens=built.get("batch_tokens", settings.batch_tokens),
        batch_slack=built.get("batch_slack", LEGACY_BATCH_SLACK),
        capture=built.get("capture", "pattern"),
    )


def _resolve_max_len(model: LoadedModel, settings: BuildSettings) -> int:
    """The applied max length: the context by default; room for BOS and the last token when BOS is prepended."""
    if settings.max_len is None:
        return model.n_ctx
    shortest = 2 if model.prepend_bos else 1
    if not shortest <= settings.max_len <= model.n_ctx:
        raise FeatstoreError(f"--max-len {settings.max_len} is outside {shortest}..{model.n_ctx} for {model.key}")
    return settings.max_len
