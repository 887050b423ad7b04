"""Replicas on other machines: TCP with a shared-secret handshake."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from altoflow.compiler import load_target
from altoflow.runtime.supervisor import Supervisor

TARGET = str(Path(__file__).resolve().parent.parent / "pipelines" / "slow.py")


def _worker(port: int, slot: int, secret: str) -> subprocess.Popen:
    env = {**os.environ, "ALTOFLOW_SECRET": secret}
    return subprocess.Popen(
        [sys.executable, "-m", "altoflow", "worker", "--target", TARGET, "--stage", "slow",
         "--slot", str(slot), "--connect", f"127.0.0.1:{port}"],
        env=env, stderr=subprocess.PIPE, text=True)


def test_remote_replicas_over_tcp():
    async def main():
        sup = Supervisor(load_target(TARGET).compiled, TARGET, listen=("127.0.0.1", 0),
                         secret=b"s3cret", remote=frozenset({"slow"}))
        await sup.__aenter__()
        workers = [_worker(sup.tcp_port, slot, "s3cret") for slot in range(2)]
        try:
            await sup.wait_ready(60)
            events = [e async for e in sup.router.submit({"n": 6})]
            assert events[0].value == sum(i * 10 for i in range(6))
            assert events[-1].type == "done"
        finally:
            await sup.stop()
            for w in workers:
                w.wait(timeout=30)  # they exit when the router goes away

    asyncio.run(main())


def test_a_replica_with_the_wrong_secret_is_turned_away():
    async def main():
        sup = Supervisor(load_target(TARGET).compiled, TARGET, listen=("127.0.0.1", 0),
                         secret=b"s3cret", remote=frozenset({"slow"}))
        await sup.__aenter__()
        intruder = _worker(sup.tcp_port, 0, "guess")
        try:
            for _ in range(100):  # the router hangs up on it, so it exits on its own
                if intruder.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            assert intruder.poll() is not None, "the router kept a replica that failed the handshake"
            assert sup.router.ready()["slow"] == 0
            # The router itself is fine: a replica with the right secret still gets in.
            honest = _worker(sup.tcp_port, 0, "s3cret")
            for _ in range(100):
                if sup.router.ready()["slow"] == 1:
                    break
                await asyncio.sleep(0.1)
            assert sup.router.ready()["slow"] == 1
        finally:
            await sup.stop()
        honest.wait(timeout=30)

    asyncio.run(main())
