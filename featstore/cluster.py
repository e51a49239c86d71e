"""Connecting to a dask.distributed cluster for `--cluster`: a scheduler address, or `local:N` for a LocalCluster
of N single-threaded worker processes on this machine (started for the command and closed after it).

`local:N` is bounded by the machine: N at most the CPUs this process may use, and N x WORKER_MEMORY_BYTES at most
the memory available now. A scheduler address must answer dask's handshake within HANDSHAKE_TIMEOUT_S (a server
that accepts and stays silent, or answers something else, is one line). The local cluster's workers ignore SIGINT
(this module is their preload), so a Ctrl-C stops the coordinator, which cancels their tasks and closes them
within CLOSE_TIMEOUT_S: one "interrupted" line, no worker tracebacks.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from distributed import Client

LOCAL = re.compile(r"local:(?P<n>\d{1,100})")
CONNECT_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
WORKER_WAIT_S = 60.0
CLOSE_TIMEOUT_S = 10.0
# A local worker measured 0.61 GB resident with random:tiny loaded and 2.04 GB with random:gpt2-medium (torch,
# transformers and TransformerLens imported): a floor per worker, known before the model is (its weights add).
WORKER_MEMORY_BYTES = 1 << 30
MAX_HANDSHAKE_BYTES = 1 << 20  # a dask handshake message is a few hundred bytes

CLUSTER_HELP = (
    "run on a dask cluster: a scheduler address (tcp://host:8786) or local:N for N worker processes "
    "on this machine (default: this process only)"
)


def dask_setup(worker) -> None:
    """A local cluster's worker preload: ignore SIGINT, which a terminal's Ctrl-C sends to the whole process group;
    the coordinator gets it and stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def local_workers(address: str) -> int | None:
    """N of `local:N`, checked against this machine (see the module docstring), or None for a scheduler address."""
    if not address.startswith("local:"):
        return None
    local = LOCAL.fullmatch(address)
    if local is None or int(local["n"]) < 1:
        raise FeatstoreError(f"--cluster {address!r}: local:N needs N of at least 1")
    n, cpus = int(local["n"]), usable_cpus()
    if n > cpus:
        raise FeatstoreError(
            f"--cluster {address!r}: this machine lets featstore use {cpus} CPU(s); local:N starts "
            f"one single-threaded worker per CPU at most (local:{cpus} or fewer)"
        )
    available = available_memory()
    if n * WORKER_MEMORY_BYTES > available:
        fits = available // WORKER_MEMORY_BYTES
        advice = f"use local:{fits} or fewer" if fits else "free some memory first"
        raise FeatstoreError(
            f"--cluster {address!r}: {n} workers need about {n * WORKER_MEMORY_BYTES / 2**30:.0f} GiB "
            f"({WORKER_MEMORY_BYTES / 2**30:.0f} GiB each) and {available / 2**30:.1f} GiB is "
            f"available; {advice}"
        )
    return n


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory() -> int:
    """Memory that can be allocated now without swapping (the kernel's MemAvailable)."""
    import psutil

    return int(psutil.virtual_memory().available)


@contextmanager
def connect(address: str) -> Iterator[Client]:
    """A client of the cluster `address` names, with at least one worker; closed (and a local cluster stopped)
    afterwards. An address that cannot be reached, or that does not answer as a dask scheduler, is one
    FeatstoreError line."""
    from distributed import Client, LocalCluster  # here: dask takes a second to import, and most commands need none

    n_local = local_workers(address)
    cluster = None
    try:
        if n_local is not None:
            cluster = LocalCluster(
                n_workers=n_local,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # a free port: 8787 may be taken
                silence_logs=logging.ERROR,  # no nanny warnings about slow worker exits
                preload=[__name__],
            )  # dask_setup above: Ctrl-C is the coordinator's to handle
            client = Client(cluster)
        else:
            check_scheduler_answers(address)
            client = Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, TypeError, MemoryError) as err:
        if cluster is not None:
            cluster.close(timeout=CLOSE_TIMEOUT_S)
        raise FeatstoreError(f"cannot connect to the dask cluster {address!r}: {_first_line(err)}") from None
    except BaseException:
        if cluster is not None:
            cluster.close(timeout=CLOSE_TIMEOUT_S)
        raise
    try:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise FeatstoreError(f"the dask cluster {address!r} has no worker (waited {WORKER_WAIT_S:.0f} s)") from None
        yield client
    finally:
        client.close(timeout=CLOSE_TIMEOUT_S)
        if cluster is not None:
            cluster.close(timeout=CLOSE_TIMEOUT_S)


def check_scheduler_answers(address: str) -> None:
    """Refuse, in one line, a TCP address that does not greet like a dask scheduler within HANDSHAKE_TIMEOUT_S: a
    scheduler writes its handshake (an 8-byte length, then a small message) as soon as it accepts, while dask's
    own client waits for it without a time limit and allocates whatever length a stranger sends."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return  # tls://, ucx://...: dask's own connect, with its timeouts
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise FeatstoreError(f"cannot connect to the dask cluster {address!r}: expected tcp://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S) as conn:
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            greeting = b""
            while len(greeting) < 8:
                chunk = conn.recv(8 - len(greeting))
                if not chunk:
                    break
                greeting += chunk
    except TimeoutError:
        raise FeatstoreError(
            f"the dask cluster {address!r} accepted the connection but sent no handshake in "
            f"{HANDSHAKE_TIMEOUT_S:.0f} s: is a dask scheduler listening there?"
        ) from None
    except OSError as err:
        raise FeatstoreError(f"cannot connect to the dask cluster {address!r}: {err.strerror or err}") from None
    if len(greeting) < 8:
        raise FeatstoreError(
            f"the dask cluster {address!r} closed the connection before its handshake: "
            "is a dask scheduler listening there?"
        )
    (length,) = struct.unpack("Q", greeting)
    if not 0 < length <= MAX_HANDSHAKE_BYTES:
        raise FeatstoreError(f"{address!r} answered, but not as a dask scheduler (its first bytes were {greeting!r})")


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
