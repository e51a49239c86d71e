"""`--cluster` bounded and interruptible: local:N capped by the machine, a scheduler that never greets or is not
dask refused in one line, and one Ctrl-C of a local:2 build stops it and its workers in seconds (exit 130)."""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from featstore import cluster as cluster_module
from featstore.cli import main
from tests.builders import MODEL, build_argv, build_command, toy_project, wait_for_a_written_shard


def run(project, capsys, *argv):
    code = main(["--root", str(project.root), *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "value, problem",
    [
        ("local:999", "lets featstore use"),
        ("local:99999999999999999999", "lets featstore use"),
        ("local:-1", "local:N needs N"),
        ("local:2x", "local:N needs N"),
    ],
)
@pytest.mark.parametrize("command", ["build", "probe"])
def test_local_n_beyond_the_machine_is_one_line_before_any_work(toy_copy, capsys, command, value, problem):
    started = time.monotonic()
    code, err = run(toy_copy, capsys, command, "--model", MODEL, "--cluster", value)
    assert code == 1 and err.count("\n") == 1 and problem in err and err.startswith("featstore: error: --cluster")
    assert time.monotonic() - started < 5


def test_local_n_is_capped_by_available_memory(toy_copy, capsys, monkeypatch):
    monkeypatch.setattr(cluster_module, "usable_cpus", lambda: 64)
    monkeypatch.setattr(cluster_module, "available_memory", lambda: 3 * 2**30 + 2**29)
    code, err = run(toy_copy, capsys, "build", "--model", MODEL, "--cluster", "local:4")
    assert code == 1 and err == (
        "featstore: error: --cluster 'local:4': 4 workers need about 4 GiB (1 GiB each) and "
        "3.5 GiB is available; use local:3 or fewer\n"
    )
    assert cluster_module.local_workers("local:3") == 3


class Server:
    """A TCP server on 127.0.0.1 that accepts, then stays silent (`reply` None), closes (b""), or answers `reply`."""

    def __init__(self, reply: bytes | None):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.socket.getsockname()[1]}"
        self.reply, self.accepted = reply, []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.socket.accept()
            except OSError:
                return
            self.accepted.append(conn)
            if self.reply == b"":
                conn.close()
            elif self.reply is not None:
                conn.sendall(self.reply)

    def close(self):
        self.socket.close()
        for conn in self.accepted:
            conn.close()


@pytest.mark.parametrize(
    "reply, problem",
    [
        (None, "accepted the connection but sent no handshake in 1 s"),
        (
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            "answered, but not as a dask scheduler (its first bytes were b'HTTP/1.1')",
        ),
        (b"", "closed the connection before its handshake"),
    ],
)
@pytest.mark.parametrize("command", ["build", "probe"])
def test_a_server_that_is_not_a_dask_scheduler_is_one_line_within_the_timeout(
    toy_copy, capsys, monkeypatch, command, reply, problem
):
    monkeypatch.setattr(cluster_module, "HANDSHAKE_TIMEOUT_S", 1.0)
    server = Server(reply)
    try:
        started = time.monotonic()
        again = ["--overwrite"] if command == "build" else ["--overwrite-train"]  # so the cluster is needed
        code, err = run(toy_copy, capsys, command, "--model", MODEL, *again, "--cluster", server.address)
        assert code == 1 and err.count("\n") == 1 and problem in err, err
        assert time.monotonic() - started < 30
    finally:
        server.close()


def test_one_ctrl_c_stops_a_local_cluster_build_and_its_workers_in_seconds(tmp_path, capfd):
    project = toy_project(tmp_path / "p", n=1500)  # train: 1,024 rows, 8 shards
    command = build_command(project, "--batch-tokens", "64", "--cluster", "local:2")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )  # its own process group, as a terminal's foreground job
    try:
        wait_for_a_written_shard(process, project)
        assert process.poll() is None, "the build finished before it could be interrupted"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the coordinator and every worker
        started = time.monotonic()
        out, err = process.communicate(timeout=60)
        assert time.monotonic() - started < 30
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert (process.returncode, out, err) == (130, "", "featstore: interrupted\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the workers are gone too
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker processes outlived the interrupted build")
    capfd.readouterr()
    assert main(build_argv(project, "--batch-tokens", "64", "--cluster", "local:2")) == 0
    out, err = capfd.readouterr()  # the resumed build: quiet but for its progress lines (every 30 s), no nanny warnings
    assert (out, [line for line in err.splitlines() if not line.startswith("build ")]) == ("", [])
