"""A build to an S3 bucket against the same build to a local folder, in the same process, on the same data.

The bucket is moto's S3 server on loopback (tests/object_servers.py), which counts the requests it serves.
Each project is built twice (the first loads the model and warms caches); the second, `--overwrite`,
is timed. Printed: build time to the bucket / to the folder; requests of the bucket build by method; bytes stored under
`features.zarr` in each; then a one-layer read of the test split (a float32 sum of that layer's attention,
through the views) from each: time, and the requests it made to the bucket (split by file).

Run: python benchmarks/object_store.py [--model smollm2-135m --dataset 87_glue_cola --limit 256]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host_path import folder_bytes  # noqa: E402
from featstore.api import Store  # noqa: E402
from featstore.catalog.splits import SplitParams  # noqa: E402
from featstore.datasets.sae_probes import import_sae_probes  # noqa: E402
from featstore.extraction.build import build_features  # noqa: E402
from featstore.extraction.plan import BuildSettings  # noqa: E402
from featstore.project import init_project, open_project  # noqa: E402
from tests.object_servers import MotoS3Server  # noqa: E402


def one_layer_sum(project, dataset: str, layer: int) -> float:
    view = Store(project).view(dataset, "test", layers=[layer])
    return float(view["attn"].astype("float32").sum().compute())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="87_glue_cola")
    parser.add_argument("--limit", type=int, default=256)
    args = parser.parse_args()
    server = MotoS3Server()
    server.start()
    os.environ.update(server.env())
    url = server.bucket_url()
    with tempfile.TemporaryDirectory(prefix="featstore-bench-") as scratch:
        projects = {
            "folder": init_project(Path(scratch) / "local"),
            "bucket": open_project(init_project(Path(scratch) / "bucket", store=url).root),
        }
        for project in projects.values():
            import_sae_probes(project, None, [args.dataset], SplitParams())
        seconds = {}
        for label, project in projects.items():  # a first build loads the model and warms caches; then timed
            build_features(project, args.model, [args.dataset], BuildSettings(device="cpu", limit=args.limit))
            server.reset_requests()
            started = time.perf_counter()
            build_features(
                project, args.model, [args.dataset], BuildSettings(device="cpu", limit=args.limit, overwrite=True)
            )
            seconds[label] = time.perf_counter() - started
        build_requests = collections.Counter(r.method for r in server.requests if "/features.zarr/" in r.path)
        stored = {
            "folder": folder_bytes(projects["folder"].store_dir / "features.zarr"),
            "bucket": sum(
                server.client().head_object(Bucket=url.split("/")[2], Key=f"proj/{key}")["ContentLength"]
                for key in projects["bucket"].store.list("features.zarr")
            ),
        }
        print(
            f"build to the bucket / to a folder: {seconds['bucket'] / seconds['folder']:.2f}x "
            f"[{seconds['bucket']:.1f} s vs {seconds['folder']:.1f} s; {args.model}, {args.dataset}, "
            f"--limit {args.limit}]; bucket requests for features: {dict(build_requests)}; bytes stored: "
            f"{stored['bucket'] / 1e6:.2f} MB in the bucket, {stored['folder'] / 1e6:.2f} MB in the folder"
        )
        layer = Store(projects["folder"]).view(args.dataset, "test").sizes["layer"] // 2
        reads = {}
        for label, project in projects.items():
            server.reset_requests()
            started = time.perf_counter()
            one_layer_sum(project, args.dataset, layer)
            reads[label] = (time.perf_counter() - started, list(server.requests))
        requests = reads["bucket"][1]
        by_file = collections.Counter(
            "attn chunks" if "/attn/c/" in r.path else r.path.rsplit("/", 2)[-2] + "/" + r.path.rsplit("/", 1)[-1]
            for r in requests
        )
        print(
            f"one-layer read of the test split (layer {layer}): bucket {reads['bucket'][0] * 1e3:.0f} ms, folder "
            f"{reads['folder'][0] * 1e3:.0f} ms; {len(requests)} requests "
            f"({sum(r.method == 'GET' for r in requests)} GET, listings: "
            f"{sum('list-type' in r.query for r in requests)}): {dict(by_file)}"
        )
    server.stop()


if __name__ == "__main__":
    main()
