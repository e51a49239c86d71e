"""`featstore build --cluster`: the shards of a split extracted and written by the workers of a dask cluster.

The coordinator (the `featstore build` process) plans one work unit per pending shard: the shard, the
batches of the whole-split plan that touch its rows (so padding and numerics are those of a
single-process build) and only the token ids of those batches. A batch that spans two units runs in both,
so consecutive shards share a unit until cutting there would duplicate at most a quarter of the unit's rows:
long prompts (small batches) get a unit per shard, a split that is one or two batches (short prompts) one unit.
Each worker loads the model once, runs its unit, writes the shard's arrays straight into the
split's version folder in the store (a shared folder every worker reaches at the same path, or a bucket)
and returns their manifest
entries. The coordinator records each shard as it completes (manifest and written set, one root write),
then publishes and registers the split as a single-process build does. At most `2 x workers` units are
submitted at a time, so a worker holds one shard in flight and the next one queued.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from featstore.cluster import connect, gpu_resources, worker_count
from featstore.digests import json_digest
from featstore.errors import FeatstoreError
from featstore.extraction.batching import TokenizedSplit
from featstore.extraction.capture import capture_last_token
from featstore.extraction.model_sources import parse_model_spec
from featstore.extraction.models import LoadedModel, ModelLoadError, release_model
from featstore.extraction.plan import BuildSettings, ShardWriting, SplitPlan, split_batches
from featstore.extraction.shards import ShardAssembler
from featstore.progress import TokenProgress
from featstore.store.layout import SplitShape
from featstore.store.location import StoreLocation
from featstore.store.writer import write_shard_arrays

if TYPE_CHECKING:
    from distributed import Client, Future

UNITS_PER_WORKER = 2
MAX_DUPLICATED = 0.25  # of a unit's rows that may be computed again by its neighbour


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: the --model spec, --device and --dtype (a worker resolves `auto` on its own)."""

    spec: str
    device: str
    dtype: str


@dataclass(frozen=True)
class ShardUnit:
    """Consecutive pending shards and all their worker needs: the split's rows `first_row` on that its batches
    cover, the batches (numbered as in the whole split), the split's shape, where its version is written (the
    store and the version's key), the digest of the model identity the split was planned with and its capture."""

    shards: tuple[int, ...]
    batches: list[slice]
    window: TokenizedSplit
    first_row: int
    shape: SplitShape
    location: StoreLocation
    key: str
    model_digest: str
    capture: str

    @property
    def rows(self) -> slice:
        return slice(self.shape.shard_rows(self.shards[0]).start, self.shape.shard_rows(self.shards[-1]).stop)


@contextmanager
def cluster_shard_writing(
    address: str, model_spec: str, settings: BuildSettings
) -> Iterator[tuple[LoadedModel, ShardWriting, int]]:
    """Connect to the cluster, have one worker load the model and describe it (tokenizer, shape, identity:
    the coordinator never loads the weights), and yield that description with the cluster's shard writing and
    how many splits to build at once (one per worker: a split of short prompts is a single unit)."""
    spec = ModelSpec(model_spec, settings.device, settings.dtype)
    with connect(address) as client:
        resources = gpu_resources(client)
        described = client.submit(describe_model, spec, resources=resources, key=_task_key("describe-model"))
        model = _result(described, f"loading {model_spec!r}")
        writing = ClusterWriting(client, spec, resources, model_digest(model.identity))
        try:
            yield model, writing.write_shards, max(1, worker_count(client))
        except BaseException:  # a Ctrl-C or a failure: the splits still waiting on the cluster stop now
            writing.stop()
            raise


@dataclass
class ClusterWriting:
    """Writes a planned split's pending shards on the cluster, recording each in the writer as it completes."""

    client: Client
    spec: ModelSpec
    resources: dict[str, int] | None
    digest: str
    _submitted: set = field(default_factory=set)
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stop(self) -> None:
        """Cancel every task still on the cluster and refuse new ones: each split waiting on one fails at once."""
        with self._lock:
            self._stopped = True
            futures = list(self._submitted)
        if futures:
            self.client.cancel(futures)

    def _submit(self, unit: ShardUnit) -> Future:
        with self._lock:
            if self._stopped:
                raise FeatstoreError("the build was stopped")
            future = self.client.submit(
                write_unit, unit, self.spec, resources=self.resources, key=_task_key(f"shard-{unit.shards[0]}")
            )
            self._submitted.add(future)
        return future

    def write_shards(
        self, model: LoadedModel, plan: SplitPlan, settings: BuildSettings, progress: TokenProgress
    ) -> None:
        """Submit one unit per pending shard, at most `UNITS_PER_WORKER` per worker at a time, and record the
        shards in completion order; on a failure, cancel the rest (what was recorded stays, for a rerun)."""
        from distributed import as_completed

        units = plan_units(plan, settings.batch_tokens, settings.batch_slack, self.digest)
        pending = np.zeros(plan.shape.n_examples, dtype=bool)
        for unit in units:
            pending[unit.rows] = True
        progress.skip(plan.tokenized.seq_lens[~pending])  # rows already written
        waiting = list(reversed(units))
        running = as_completed()
        submitted: dict[str, tuple[Future, ShardUnit]] = {}

        def submit_next() -> None:
            unit = waiting.pop()
            future = self._submit(unit)
            submitted[future.key] = (future, unit)
            running.add(future)

        try:
            for _ in range(min(len(waiting), UNITS_PER_WORKER * max(1, worker_count(self.client)))):
                submit_next()
            for future in running:
                _, unit = submitted.pop(future.key)
                with self._lock:
                    self._submitted.discard(future)
                written = _result(future, f"shards {list(unit.shards)} of {plan.writer.key}")
                for shard in unit.shards:
                    plan.writer.record_shard(shard, written[shard])
                progress.done(plan.tokenized.seq_lens[unit.rows])
                if waiting:
                    submit_next()
        finally:
            if submitted:
                self.client.cancel([future for future, _ in submitted.values()])


def plan_units(plan: SplitPlan, batch_tokens: int, slack: float, digest: str) -> list[ShardUnit]:
    """Units of consecutive pending shards (cut where little is computed twice, see `_cheap_cut`), each with the
    batches of the whole-split plan that touch its rows and only the rows those batches cover."""
    batches = split_batches(plan.tokenized, batch_tokens, slack)
    groups: list[list[int]] = []
    for shard in plan.writer.pending_shards:
        if groups and groups[-1][-1] == shard - 1 and not _cheap_cut(batches, plan.shape, groups[-1][0], shard):
            groups[-1].append(shard)
        else:
            groups.append([shard])
    units = []
    for shards in groups:
        rows = slice(plan.shape.shard_rows(shards[0]).start, plan.shape.shard_rows(shards[-1]).stop)
        touching = [batch for batch in batches if batch.start < rows.stop and batch.stop > rows.start]
        first, last = touching[0].start, touching[-1].stop
        units.append(
            ShardUnit(
                tuple(shards),
                touching,
                _window(plan.tokenized, slice(first, last)),
                first,
                plan.shape,
                plan.writer.location,
                plan.writer.key,
                digest,
                plan.capture,
            )
        )
    return units


def _cheap_cut(batches: list[slice], shape: SplitShape, first: int, shard: int) -> bool:
    """Whether a unit starting at shard `first` may end before `shard`: the batch spanning that boundary (which
    both units would run) holds at most `MAX_DUPLICATED` of the unit's rows, or no batch spans it."""
    boundary = shape.shard_rows(shard).start
    unit_rows = boundary - shape.shard_rows(first).start
    return all(b.stop - b.start <= MAX_DUPLICATED * unit_rows for b in batches if b.start < boundary < b.stop)


def write_unit(unit: ShardUnit, spec: ModelSpec) -> dict[int, dict[str, list]]:
    """On a worker: run the unit's batches, keep its shards' rows, write each shard into the split's version and
    return the manifest entries of the files written, by shard."""
    model = worker_model(spec)
    if model_digest(model.identity) != unit.model_digest:
        raise FeatstoreError(
            f"{_worker_name()} loaded {spec.spec!r} as a different model than the one the build "
            "was planned with (other weights, library versions or dtype on that machine)"
        )
    assembler = ShardAssembler(unit.window, unit.shape, list(unit.shards), unit.first_row)
    written = {}
    with torch.inference_mode():
        for batch in unit.batches:
            local = slice(batch.start - unit.first_row, batch.stop - unit.first_row)
            attn, resid = capture_last_token(
                model, unit.window.padded(local), unit.window.seq_lens[local], strategy=unit.capture
            )
            for shard, arrays in assembler.add(batch, attn, resid):
                written[shard] = write_shard_arrays(unit.location, unit.key, unit.shape, shard, *arrays)
    return written


def describe_model(spec: ModelSpec) -> LoadedModel:
    """On a worker: load the model (kept for the shards to come) and return it without its weights."""
    return replace(worker_model(spec), bridge=None)


_LOADED: dict[ModelSpec, LoadedModel] = {}
_LOADING = threading.Lock()


def worker_model(spec: ModelSpec) -> LoadedModel:
    """The model this worker process has loaded for `spec`, loading it on first use (and releasing a model of
    an earlier spec); a failure names the worker."""
    with _LOADING:
        if spec not in _LOADED:
            for old in _LOADED.values():
                release_model(old)
            _LOADED.clear()
            transformers_logging.disable_progress_bar()
            try:
                _LOADED[spec] = parse_model_spec(spec.spec).load(device=spec.device, dtype=spec.dtype)
            except ModelLoadError as err:
                raise ModelLoadError(f"{_worker_name()}: {err}") from None
        return _LOADED[spec]


def model_digest(identity: dict) -> str:
    """A short digest of a model identity: equal on every worker that loaded the same model."""
    return json_digest(identity, 16)


def _window(tokenized: TokenizedSplit, rows: slice) -> TokenizedSplit:
    return TokenizedSplit(
        tokenized.example_ids[rows], tokenized.token_ids[rows], tokenized.seq_lens[rows], tokenized.source_lens[rows]
    )


def _result(future: Future, what: str):
    """A task's result; a worker lost too often or a cancelled task becomes one FeatstoreError line (a task's
    own FeatstoreError comes back as it is)."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError

    try:
        return future.result()
    except KilledWorker:
        raise FeatstoreError(
            f"{what}: the dask workers running it died repeatedly (out of memory?); what was "
            "written is kept, run the command again to resume"
        ) from None
    except FutureCancelledError:
        raise FeatstoreError(
            f"{what} was cancelled on the dask cluster (its scheduler restarted?); run the command again to resume"
        ) from None


def _task_key(name: str) -> str:
    """A task key of its own per submission: a task is never answered by an older result of the same name."""
    return f"featstore-{name}-{uuid.uuid4().hex}"


def _worker_name() -> str:
    from distributed import get_worker

    try:
        return f"dask worker {get_worker().address}"
    except ValueError:
        return "this process"
