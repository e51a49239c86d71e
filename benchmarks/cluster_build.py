"""A build on a dask LocalCluster against the same build in one process, and what serialises on the coordinator.

Prints, for one SAE-Probes dataset (train and test, `--limit` examples each):
1. throughput (real tokens/s, wall clock) of the single-process build and of cluster builds with 1 and 2
   local workers (one thread each). Every timed build follows a warm-up build of 8 examples per split and
   overwrites it, so the model is loaded (in this process, or once per worker) before timing starts.
2. per unit: the worker's task time (task stream: run the unit's batches, write its shards) and, per shard, the
   coordinator's time recording it (manifest merge + one root-attribute write), and their ratio; per split:
   the coordinator's serial work (tokenising, catalog commits, row index, publishing).
3. the prediction for 100 GPU workers on the 226 splits of the SAE-Probes benchmark from these figures (the model
   is printed with it).

Run: python benchmarks/cluster_build.py --model random:gpt2-medium --dataset 87_glue_cola --limit 128
"""

from __future__ import annotations

import argparse
import inspect
import io
import math
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from distributed import Client, LocalCluster, get_task_stream

from featstore.catalog.splits import SplitParams
from featstore.datasets.sae_probes import import_sae_probes
from featstore.extraction import build as build_module
from featstore.extraction import distributed_build
from featstore.extraction.build import build_features
from featstore.extraction.plan import BuildSettings
from featstore.progress import TokenProgress
from featstore.project import init_project
from featstore.store.writer import SplitWriter

N_GPUS = 100


class Timers:
    """Seconds spent in wrapped coordinator functions, and how often each ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started
                self.calls[label] += 1

        setattr(owner, name, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def per_call(self, label: str) -> float:
        return self.seconds[label] / max(self.calls[label], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:gpt2-medium")
    parser.add_argument("--dataset", default="87_glue_cola")
    parser.add_argument("--limit", type=int, default=128, help="examples per split (default: %(default)s)")
    parser.add_argument("--batch-tokens", type=int, default=8192)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="featstore-cluster-bench-") as folder:
        benchmark(args, Path(folder))


def benchmark(args: argparse.Namespace, root: Path) -> None:
    """Run the builds and print the figures and the prediction."""
    project = init_project(root)
    import_sae_probes(project, None, [args.dataset], SplitParams())
    settings = BuildSettings(limit=args.limit, batch_tokens=args.batch_tokens, device="cpu", overwrite=True)
    build_module.TokenProgress = lambda lengths, desc: TokenProgress(lengths, desc, io.StringIO())  # quiet
    timers = Timers()
    timers.wrap(build_module, "build_split", "split")
    timers.wrap(distributed_build.ClusterWriting, "write_shards", "shards")
    timers.wrap(SplitWriter, "record_shard", "record")
    n_tokens = sum(int(job_tokens) for job_tokens in split_tokens(project, args))
    warm_up = replace(settings, limit=min(8, args.limit))  # loads the model, warms caches: not timed
    build_features(project, args.model, [args.dataset], warm_up)
    started = time.perf_counter()
    build_features(project, args.model, [args.dataset], settings)
    local_s = time.perf_counter() - started
    print(
        f"{args.model} on {args.dataset}, {args.limit} examples per split, {n_tokens} real tokens; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"single process: {n_tokens / local_s:7.0f} tok/s ({local_s:.1f} s)")
    figures = {}
    for workers in (1, 2):
        started = time.perf_counter()
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            start_s = time.perf_counter() - started
            build_features(project, args.model, [args.dataset], warm_up, cluster=cluster.scheduler_address)
            timers.reset()
            with get_task_stream(client=client) as stream:
                started = time.perf_counter()
                build_features(project, args.model, [args.dataset], settings, cluster=cluster.scheduler_address)
                wall = time.perf_counter() - started
        tasks = [
            sum(part["stop"] - part["start"] for part in task["startstops"] if part["action"] == "compute")
            for task in stream.data
            if "-shard-" in task["key"]
        ]
        shard_s = sum(tasks) / len(tasks)
        serial_s = (timers.seconds["split"] - timers.seconds["shards"]) / timers.calls["split"]
        figures[workers] = (wall, shard_s, timers.per_call("record"), serial_s, len(tasks), timers.calls["split"])
        print(
            f"{workers} local worker(s): {n_tokens / wall:7.0f} tok/s ({wall:.1f} s; cluster start {start_s:.1f} s "
            f"and a first build with the model load not counted); {len(tasks)} units of {shard_s:.2f} s; "
            f"coordinator per shard {1e3 * figures[workers][2]:.1f} ms = {figures[workers][2] / shard_s:.1%} of a "
            f"unit; per split, serial coordinator work {serial_s:.2f} s"
        )
    print(f"speed-up 2 workers / 1 worker: {figures[1][0] / figures[2][0]:.2f}x (on {os.cpu_count()} CPUs)")
    predict(*figures[2][1:])


def split_tokens(project, args: argparse.Namespace) -> list[int]:
    """Real tokens of each split of the dataset after truncation to the model's context (tokenised here)."""
    from featstore.extraction.batching import order_split
    from featstore.extraction.model_sources import parse_model_spec
    from featstore.extraction.models import release_model

    model = parse_model_spec(args.model).load(device="cpu")
    try:
        return [
            int(order_split(job.example_ids, model.encode(job.prompts), model.n_ctx, model.prepend_bos).seq_lens.sum())
            for job in build_module.plan_jobs(project, [args.dataset], args.limit)
        ]
    finally:
        release_model(model)


def predict(unit_s: float, record_s: float, serial_s: float, n_units: int, n_splits: int) -> None:
    """The model of a cluster build: the coordinator builds up to N splits at once (N workers), a thread each.
    Per split it tokenises, commits the `building` status, writes the row index, publishes and commits the
    catalog (`serial`, catalog commits taking turns across threads), and records each finished shard (c: a
    manifest merge and one root-attribute write). The units of all splits in flight share the N workers. So,
    for a benchmark of P splits of U units each,
        T(N) = max(ceil(P x U / N) x unit_time, P x (serial + U x c))
    the first term the workers' share of the work, the second what serialises on the coordinator. With short
    prompts a split is one unit (U = 1), with long prompts one unit per shard (U up to 8 for a SAE-Probes train
    split, 32 for a test split)."""
    per_split = n_units / n_splits
    print(inspect.cleandoc(predict.__doc__))
    for splits, units in ((226, per_split), (226, 8), (226, 32)):  # 113 datasets x (train, test)
        one = max(math.ceil(splits * units) * unit_s, splits * (serial_s + units * record_s))
        many = max(math.ceil(splits * units / N_GPUS) * unit_s, splits * (serial_s + units * record_s))
        print(
            f"  P = {splits}, U = {units:4.1f}: T(1) = {one:9.1f} s, T({N_GPUS}) = {many:8.1f} s, speed-up "
            f"{one / many:5.1f}x of {N_GPUS} (unit {unit_s:.2f} s, c {1e3 * record_s:.1f} ms, serial {serial_s:.2f} s "
            "measured here)"
        )


if __name__ == "__main__":
    main()
