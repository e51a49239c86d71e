"""Connecting to a dask.distributed cluster for `--cluster`: a scheduler address, or `local:N` for a LocalCluster
of N single-threaded worker processes on this machine (started for the command and closed after it)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from distributed import Client

LOCAL = re.compile(r"local:(?P<n>\d+)")
CONNECT_TIMEOUT_S = 10.0
WORKER_WAIT_S = 60.0

CLUSTER_HELP = ("run on a dask cluster: a scheduler address (tcp://host:8786) or local:N for N worker processes "
                "on this machine (default: this process only)")


@contextmanager
def connect(address: str) -> Iterator[Client]:
    """A client of the cluster `address` names, with at least one worker; closed (and a local cluster stopped)
    afterwards. An address that cannot be reached is one FeatstoreError line."""
    from distributed import Client, LocalCluster  # here: dask takes a second to import, and most commands need none

    local = LOCAL.fullmatch(address)
    if address.startswith("local:") and (local is None or int(local["n"]) < 1):
        raise FeatstoreError(f"--cluster {address!r}: local:N needs N of at least 1")
    cluster = None
    try:
        if local:
            cluster = LocalCluster(n_workers=int(local["n"]), threads_per_worker=1, processes=True,
                                   dashboard_address=":0")  # a free port: 8787 may be taken
            client = Client(cluster)
        else:
            client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, TypeError) as err:
        if cluster is not None:
            cluster.close()
        raise FeatstoreError(f"cannot connect to the dask cluster {address!r}: {_first_line(err)}") from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise FeatstoreError(f"the dask cluster {address!r} has no worker (waited {WORKER_WAIT_S:.0f} s)") from None
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def worker_count(client: Client) -> int:
    """How many workers the cluster has now."""
    return len(client.scheduler_info()["workers"])


def gpu_resources(client: Client) -> dict[str, int] | None:
    """`{"GPU": 1}` when the cluster's workers advertise a GPU resource (each task then takes one GPU), else None."""
    workers = client.scheduler_info()["workers"].values()
    return {"GPU": 1} if any(worker.get("resources", {}).get("GPU") for worker in workers) else None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def joblib_on_cluster(address: str) -> Iterator[int]:
    """Run joblib's parallel calls as tasks on the cluster (joblib's dask backend); yields how many run at once
    (the workers' threads)."""
    import joblib

    with connect(address) as client, joblib.parallel_config(backend="dask"):
        yield sum(worker["nthreads"] for worker in client.scheduler_info()["workers"].values())
