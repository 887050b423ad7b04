"""Faults in the served runtime end in completed requests or clean errors, and the server stays up."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from altoflow.compiler import load_target
from altoflow._errors import Overloaded
from altoflow.runtime.supervisor import Supervisor

TARGET = str(Path(__file__).resolve().parent.parent / "pipelines" / "slow.py")


async def _events(handle):
    return [e async for e in handle]


def _total(n: int) -> int:
    return sum(i * 10 for i in range(n))


async def _started(**kw) -> Supervisor:
    sup = Supervisor(load_target(TARGET).compiled, TARGET, **kw)
    await sup.__aenter__()
    await sup.wait_ready()
    return sup


def test_kill_of_a_stateless_replica_loses_nothing():
    async def main():
        sup = await _started()
        try:
            handles = [sup.router.submit({"n": 20, "delay": 0.1}) for _ in range(6)]
            await asyncio.sleep(0.3)  # work is in flight on both replicas of `slow`
            sup.kill("slow", 0)
            results = await asyncio.wait_for(asyncio.gather(*(_events(h) for h in handles)), 60)
            for events in results:
                assert events[-1].type == "done", events[-1]
                assert [e.value for e in events if e.type == "output"] == [_total(20)]
            # Not vacuous: work that was running on the killed replica ran again elsewhere.
            assert any(e.what == "redispatch" and e.stage == "slow" for e in sup.router.core.story())
            # The killed replica's invocations will never be acknowledged: the router forgot
            # when it dispatched them (it keeps nothing for a replica that is gone).
            assert not sup.router._started
            # The supervisor restarts it; the server keeps serving.
            await sup.wait_ready()
            again = await asyncio.wait_for(_events(sup.router.submit({"n": 3})), 30)
            assert again[0].value == _total(3)
        finally:
            await sup.stop()

    asyncio.run(main())


def test_kill_of_an_aggregate_replica_loses_nothing():
    async def main():
        sup = await _started()
        try:
            handles = [sup.router.submit({"n": 30, "delay": 0.1}) for _ in range(8)]
            await asyncio.sleep(0.3)
            sup.kill("total", 0)
            results = await asyncio.wait_for(asyncio.gather(*(_events(h) for h in handles)), 60)
            # Every request gets the reference's result, those whose group was on the killed
            # replica too: the router replays the group's inputs to its restarted replica.
            for events in results:
                assert events[-1].type == "done", events[-1]
                assert [e.value for e in events if e.type == "output"] == [_total(30)]
            story = sup.router.core.story()
            # Not vacuous: groups lived on the killed replica and were rebuilt.
            assert any(e.what == "replay" and e.stage == "total" for e in story)
            assert sup.router.core.replay_buffered == 0
            await sup.wait_ready()
            again = await asyncio.wait_for(_events(sup.router.submit({"n": 4})), 30)
            assert again[0].value == _total(4)
        finally:
            await sup.stop()

    asyncio.run(main())


@pytest.mark.parametrize("garbage", [
    b"\x00" * 64,                           # not a frame at all
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",   # the wrong protocol
    bytes.fromhex("40000000af01") + b"\x01",  # a frame header cut short, then EOF
])
def test_garbage_on_a_replica_socket_leaves_the_router_up(garbage):
    async def main():
        sup = await _started()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(sup.path)
                s.sendall(garbage)
                await asyncio.sleep(0.2)
            events = await asyncio.wait_for(_events(sup.router.submit({"n": 5})), 30)
            assert events[0].value == _total(5) and events[-1].type == "done"
        finally:
            await sup.stop()

    asyncio.run(main())


def test_a_client_that_goes_away_cancels_its_work(tmp_path, monkeypatch):
    monkeypatch.setenv("ALTOFLOW_TEST_MARKERS", str(tmp_path))

    async def main():
        sup = await _started()
        try:
            handle = sup.router.submit({"n": 4, "delay": 30})
            await asyncio.sleep(0.5)  # the slow invocations are running
            await handle.aclose()
            for _ in range(100):
                if len(list(tmp_path.iterdir())) == 4:
                    break
                await asyncio.sleep(0.05)
            assert len(list(tmp_path.iterdir())) == 4
            assert sup.router.core.requests == {}
            # The credits came back: the replicas take new work at once.
            events = await asyncio.wait_for(_events(sup.router.submit({"n": 8})), 30)
            assert events[0].value == _total(8)
        finally:
            await sup.stop()

    asyncio.run(main())


def test_flood_beyond_capacity_is_refused_not_queued():
    async def main():
        sup = await _started(max_inflight=3)
        try:
            handles = [sup.router.submit({"n": 2, "delay": 0.2}) for _ in range(3)]
            with pytest.raises(Overloaded, match=r"busy.*--max-inflight 3"):
                sup.router.submit({"n": 2})
            for h in handles:
                assert (await asyncio.wait_for(_events(h), 30))[-1].type == "done"
            assert (await _events(sup.router.submit({"n": 1})))[-1].type == "done"
        finally:
            await sup.stop()

    asyncio.run(main())


def test_shutdown_leaves_no_process_behind():
    async def main():
        sup = await _started()
        pids = [c.process.pid for c in sup.children]
        await sup.stop()
        return pids

    for pid in asyncio.run(main()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_replica_that_cannot_start_fails_the_start_and_says_so():
    target = str(Path(__file__).resolve().parent.parent / "pipelines" / "broken_init.py")

    async def main() -> None:
        sup = Supervisor(load_target(target).compiled, target)
        await sup.__aenter__()
        try:
            with pytest.raises(RuntimeError, match=r"replica Scorer#0 exited before it connected.*__init__"):
                await sup.wait_ready(timeout=60)
        finally:
            await sup.stop()

    asyncio.run(main())


def test_a_second_replica_for_a_connected_slot_is_turned_away(caplog):
    # Two `altoflow worker --slot 0` by mistake would split an aggregate's groups between them.
    from altoflow import wire as fr
    from altoflow.runtime.router import Router, _Protocol

    class Transport:
        closed = False

        def write(self, data: bytes) -> None:
            pass

        def close(self) -> None:
            self.closed = True

        def is_closing(self) -> bool:
            return self.closed

    async def main() -> None:
        router = Router(load_target(TARGET).compiled)
        hello = fr.encode_frame(fr.Kind.HELLO, body=fr.Hello(stage="total", slot=0))
        first, second = _Protocol(router), _Protocol(router)
        for proto in (first, second):
            proto.connection_made(Transport())
            proto.data_received(hello)
        assert not first.conn.transport.closed and second.conn.transport.closed
        assert router.live_slots() == {("total", 0)}

    asyncio.run(main())
    assert "a connecting replica broke the protocol" in caplog.text
    assert "slot 0 of total is connected already" in caplog.text
