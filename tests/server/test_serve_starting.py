"""``altoflow serve`` opens its HTTP port before its replicas are in: ``/healthz`` says
``starting`` (503) while a class stage's ``__init__`` is still loading, requests get 503 with
``Retry-After``, and once every replica is in it says ``ok`` and requests run; a start that
fails after the port opened still exits with status 3."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
SLOW_INIT = str(TESTS / "pipelines" / "slow_init.py")
BROKEN_INIT = str(TESTS / "pipelines" / "broken_init.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(target: str, port: int, stderr, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "altoflow", "serve", target, "--port", str(port),
                             *args], stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT,
                            env={**os.environ, **env})


def _first_answer(url: str, proc: subprocess.Popen, err: Path) -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
        try:
            return httpx.get(f"{url}/healthz", timeout=5)
        except httpx.TransportError:  # not bound yet
            time.sleep(0.05)


def test_healthz_says_starting_until_every_replica_is_in(tmp_path: Path) -> None:
    gate, err = tmp_path / "gate", tmp_path / "stderr"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(err, "w") as stderr:
        proc = _serve(SLOW_INIT, port, stderr, {"ALTOFLOW_TEST_GATE": str(gate)},
                      "--replicas", "Model=2")
    try:
        health = _first_answer(url, proc, err)  # the replicas wait for the gate: not in yet
        assert health.status_code == 503
        assert health.json()["status"] == "starting"
        assert health.json()["replicas"] == {"Model": {"ready": 0, "desired": 2}}
        early = httpx.post(f"{url}/v1/run", json={"text": "abc"}, timeout=5)
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert "the server is starting: 0 of 2 replicas are in; retry in 1 s" in early.json()["detail"]
        assert "serves slow_init" not in err.read_text()  # the banner waits for the replicas
        gate.touch()
        deadline = time.monotonic() + 60
        while (health := httpx.get(f"{url}/healthz", timeout=5)).status_code != 200:
            assert health.json()["status"] == "starting" and time.monotonic() < deadline
            time.sleep(0.05)
        assert health.json()["status"] == "ok"
        assert health.json()["replicas"] == {"Model": {"ready": 2, "desired": 2}}
        lines = httpx.post(f"{url}/v1/run", json={"text": "abc"}, timeout=30).text.splitlines()
        assert '"value": 3' in lines[0] and '"type": "done"' in lines[-1]
        while "serves slow_init" not in err.read_text():
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0, err.read_text()


def test_a_start_that_fails_after_the_port_opened_exits_3(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with open(err, "w") as stderr:
        proc = _serve(BROKEN_INIT, _free_port(), stderr, {})
    try:
        assert proc.wait(60) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.read_text()
    assert "the model file is missing" in text  # the replica's traceback
    assert "the server could not start: replica Scorer#0 exited before it connected" in text
    assert "serves broken_init" not in text
