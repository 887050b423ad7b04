"""How ``altoflow serve`` stops: SIGTERM drains for ``--grace`` seconds then cancels what is
left, a second signal exits at once, no replica outlives the server (not even after kill -9),
and a socket directory left by a killed server is removed by the next one.

Real processes on 127.0.0.1, each test bounded in time. The pipeline is
``tests/pipelines/hanging.py``: an async stage and a sync one (in a thread, which nothing can
interrupt) that take as long as the request says, and leave a marker file once they run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from altoflow.runtime.supervisor import OWNER_FILE, SOCKET_DIR_PREFIX, remove_stale_socket_dirs

HANGING = str(Path(__file__).resolve().parent / "pipelines" / "hanging.py")
CANCELLED = {"type": "error", "stage": None, "ancestry": {},
             "error": "the request was cancelled before it ended (the server is shutting down)",
             "exc_type": "Cancelled"}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads processes from /proc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.05)


class Serve:
    """``altoflow serve tests/pipelines/hanging.py`` in a subprocess, with its own temp dir."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.markers = tmp / "markers"
        self.markers.mkdir(exist_ok=True)
        self.tmpdir = tmp / "t"  # where its socket directory goes
        self.tmpdir.mkdir(exist_ok=True)
        env = {**os.environ, "ALTOFLOW_TEST_MARKERS": str(self.markers), "TMPDIR": str(self.tmpdir)}
        self.log = open(tmp / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "altoflow", "serve", HANGING, "--port", str(self.port), *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.replicas: list[int] = []

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"altoflow serve exited:\n{self.output()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).json()["status"] == "ok":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline, f"not healthy in 60 s:\n{self.output()}"
            time.sleep(0.1)
        self.replicas = _children(self.proc.pid)
        assert len(self.replicas) == 2, self.replicas  # one replica of each stage

    def started(self, stage: str, seconds: float) -> bool:
        return any(m.startswith(f"started-{stage}-{seconds:g}-") for m in os.listdir(self.markers))

    def request(self, **fields) -> "Request":
        return Request(self.url, fields)

    def socket_dirs(self) -> list[Path]:
        return [p for p in self.tmpdir.iterdir() if p.name.startswith(SOCKET_DIR_PREFIX)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.replicas:  # whatever a failed test left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


class Request:
    """A ``POST /v1/run`` streamed on a thread; ``lines`` are its events as they arrive."""

    def __init__(self, url: str, fields: dict) -> None:
        self.lines: list[dict] = []
        self.responded = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(url, fields), daemon=True)
        self.thread.start()
        assert self.responded.wait(30), "no response to POST /v1/run"

    def _run(self, url: str, fields: dict) -> None:
        try:
            with httpx.stream("POST", f"{url}/v1/run", json=fields, timeout=60) as resp:
                assert resp.status_code == 200
                self.responded.set()
                for line in resp.iter_lines():
                    if line:
                        event = json.loads(line)
                        event.pop("request_id", None)  # each request's own; not compared
                        self.lines.append(event)
        except Exception as exc:
            self.error = exc
            self.responded.set()

    def result(self, seconds: float = 10) -> list[dict]:
        self.thread.join(seconds)
        assert not self.thread.is_alive(), "the response did not end"
        assert self.error is None, repr(self.error)
        return self.lines


@pytest.fixture
def tmp():
    # Short: a UNIX socket's path has at most 107 bytes, and pytest's tmp_path is long.
    path = Path(tempfile.mkdtemp(prefix="af-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(tmp):
    started: list[Serve] = []

    def start(*args: str) -> Serve:
        server = Serve(tmp, *args)
        started.append(server)
        server.wait_healthy()
        return server

    yield start
    for server in started:
        server.close()


def test_sigterm_lets_requests_finish_within_grace_then_cancels_the_rest(serve) -> None:
    grace = 3.0
    server = serve("--grace", str(grace))
    hanging = server.request()  # an hour, in both stages
    _wait_until(lambda: server.started("wait", 3600) and server.started("block", 3600), 30,
                "the hanging request reaching both replicas")
    quick = server.request(seconds=1)
    _wait_until(lambda: server.started("block", 1), 30, "the quick request reaching its replicas")
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    # A new request is turned away: the port is closed, or (in the moment before) 503.
    time.sleep(0.3)
    try:
        refused = httpx.post(f"{server.url}/v1/run", json={"seconds": 0}, timeout=5).status_code
    except httpx.ConnectError:
        refused = "refused"
    assert refused in (503, "refused")
    try:
        code = server.proc.wait(grace + 8)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve still runs {grace + 8} s after SIGTERM:\n{server.output()}")
    took = time.monotonic() - signalled
    assert code == 0, server.output()
    assert grace - 0.5 < took < grace + 6, took
    # The request that ended within the grace period got all of its answer ...
    lines = quick.result()
    assert lines[-1] == {"type": "done"}
    assert sorted(e["stage"] for e in lines[:-1]) == ["block", "wait"]
    # ... and the one that did not ended with the cancelled event, not a cut stream.
    assert hanging.result() == [CANCELLED]
    assert "cancelled 1 request(s)" in server.output()
    _wait_until(lambda: not any(map(_alive, server.replicas)), 5, "the replicas exiting")
    assert server.socket_dirs() == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_exits_at_once_and_kills_the_replicas(serve, sig) -> None:
    server = serve("--grace", "600")
    hanging = server.request()
    _wait_until(lambda: server.started("wait", 3600) and server.started("block", 3600), 30,
                "the request reaching both replicas")
    server.proc.send_signal(sig)
    _wait_until(lambda: "taking no new requests" in server.output(), 10, "the drain starting")
    signalled = time.monotonic()
    server.proc.send_signal(sig)
    try:
        code = server.proc.wait(5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve still runs 5 s after the second signal:\n{server.output()}")
    assert time.monotonic() - signalled < 3
    assert code == 128 + sig, server.output()
    _wait_until(lambda: not any(map(_alive, server.replicas)), 2, "the replicas dying")
    assert server.socket_dirs() == []
    hanging.thread.join(10)  # its connection went with the process


def test_kill_9_of_serve_leaves_no_replica_and_the_next_start_removes_its_socket_dir(serve) -> None:
    first = serve()
    first.request()  # busy in both replicas: an async call and a sync one in a thread
    _wait_until(lambda: first.started("wait", 3600) and first.started("block", 3600), 30,
                "the request reaching both replicas")
    (left,) = first.socket_dirs()
    assert (left / OWNER_FILE).read_text().strip() == str(first.proc.pid)
    first.proc.kill()
    first.proc.wait(10)
    # Each replica sees its router's socket close and exits, even the one whose thread is stuck.
    _wait_until(lambda: not any(map(_alive, first.replicas)), 10, "the orphaned replicas exiting")
    assert left.exists()  # nobody was left to remove it ...
    second = serve()  # ... until the next server starts (with the same temp dir)
    assert not left.exists()
    assert [p.name for p in second.socket_dirs()] != [left.name]
    assert len(second.socket_dirs()) == 1


def test_only_socket_dirs_of_dead_owners_are_removed(tmp) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def make(name: str, owner: str | None) -> Path:
        path = tmp / name
        path.mkdir()
        (path / "router.sock").touch()
        if owner is not None:
            (path / OWNER_FILE).write_text(owner)
        return path

    stale = make(f"{SOCKET_DIR_PREFIX}stale", f"{dead.pid}\n")
    live = make(f"{SOCKET_DIR_PREFIX}live", f"{os.getppid()}\n")
    ownerless = make(f"{SOCKET_DIR_PREFIX}old", None)  # an older altoflow's, or being made
    garbled = make(f"{SOCKET_DIR_PREFIX}garbled", "not a pid")
    other = make("someone-else", f"{dead.pid}\n")
    assert remove_stale_socket_dirs(str(tmp)) == [str(stale)]
    assert not stale.exists()
    assert all(p.exists() for p in (live, ownerless, garbled, other))
