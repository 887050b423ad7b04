"""Whatever a stage raises, returns or does to its replica, the request gets an answer and the
stage keeps serving: errors that cannot be encoded as they are, and inputs that kill replicas."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from altoflow.compiler import load_target
from altoflow.runtime.supervisor import Supervisor
from altoflow.server.served import ServedIngress

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
HOSTILE = str(PIPELINES / "hostile.py")
POISON = str(PIPELINES / "poison.py")
SLOW = str(PIPELINES / "slow.py")


async def _events(handle):
    return [e async for e in handle]


async def _started(target: str, **kw) -> Supervisor:
    sup = Supervisor(load_target(target).compiled, target, **kw)
    await sup.__aenter__()
    await sup.wait_ready()
    return sup


def _child(sup: Supervisor, stage: str, slot: int = 0):
    return next(c for c in sup.children if (c.stage, c.slot) == (stage, slot))


def _credits(sup: Supervisor, stage: str) -> list[int]:
    return [rep.credits for rep in sup.router.core.replicas.values() if rep.stage == stage]


def test_an_error_with_a_lone_surrogate_is_answered_and_frees_the_stage():
    async def main():
        sup = await _started(HOSTILE)
        try:
            bad = await asyncio.wait_for(_events(sup.router.submit({"name": "\ud800", "text": "x"})), 30)
            assert bad[-1].type == "error" and bad[-1].stage == "lookup"
            assert bad[-1].exc_type == "LookupError"
            assert "no entry \\ud800" in bad[-1].error  # escaped, not dropped
            bad[-1].error.encode("utf-8")  # the answer itself can be sent
            # concurrency=1: a second request gets the replica only if the credit came back.
            good = await asyncio.wait_for(_events(sup.router.submit({"name": "a", "text": "x y"})), 30)
            assert good[-1].type == "done", good[-1]
            assert {e.stage: e.value for e in good if e.type == "output"} == {"lookup": 1, "report": "x,y"}
            assert _credits(sup, "lookup") == [1]
        finally:
            await sup.stop()

    asyncio.run(main())


def test_an_aggregate_that_raises_or_returns_what_cannot_be_sent_keeps_its_replica():
    async def main():
        sup = await _started(HOSTILE)
        try:
            pid = _child(sup, "report").process.pid
            raised = await asyncio.wait_for(_events(sup.router.submit({"name": "a", "text": "x raise"})), 30)
            assert raised[-1].type == "error" and raised[-1].stage == "report", raised[-1]
            assert raised[-1].exc_type == "ValueError" and "cannot report \\ud800" in raised[-1].error
            unsendable = await asyncio.wait_for(_events(sup.router.submit({"name": "a", "text": "object"})), 30)
            assert unsendable[-1].type == "error" and unsendable[-1].stage == "report", unsendable[-1]
            assert "object" in unsendable[-1].error
            good = await asyncio.wait_for(_events(sup.router.submit({"name": "b", "text": "y x"})), 30)
            assert good[-1].type == "done", good[-1]
            assert [e.value for e in good if e.stage == "report"] == ["x,y"]
            # The same replica answered all three: it did not exit.
            assert _child(sup, "report").process.pid == pid
            assert _child(sup, "report").restarts == 0
        finally:
            await sup.stop()

    asyncio.run(main())


def test_an_input_that_kills_its_replica_fails_with_replica_died_and_others_complete():
    async def main():
        async with ServedIngress(POISON) as ingress:
            sup = ingress.supervisor
            poison = sup.router.submit({"text": "a b poison"})
            others = [sup.router.submit({"text": f"x{i} y{i}"}) for i in range(10)]
            ends = await asyncio.wait_for(asyncio.gather(_events(poison), *map(_events, others)), 60)
            bad = ends[0][-1]
            assert (bad.type, bad.stage, bad.ancestry, bad.exc_type) == (
                "error", "crash", {"name": 2}, "ReplicaDied"), bad
            assert "2 replicas died running this item" in bad.error and "'crash'" in bad.error
            for i, events in enumerate(ends[1:]):
                assert events[-1].type == "done", events[-1]
                assert sorted(e.value for e in events if e.type == "output") == [f"X{i}", f"Y{i}"]
            # It was run twice, not in a loop: two deaths, and the stage serves on.
            assert [e.what for e in sup.router.core.story() if e.what == "poison"] == ["poison"]
            assert b'altoflow_items_poisoned_total{stage="crash"} 1.0' in ingress.metrics()
            await sup.wait_ready()
            more = [sup.router.submit({"text": f"z{i}"}) for i in range(20)]
            ends = await asyncio.wait_for(asyncio.gather(*map(_events, more)), 60)
            assert [events[-1].type for events in ends] == ["done"] * 20
            while sum(c.restarts for c in sup.children if c.stage == "crash") < 2:
                await asyncio.sleep(0.02)
            assert sum(c.restarts for c in sup.children if c.stage == "crash") == 2
            assert ingress.health()["status"] == "ok" and ingress.health()["crash_loop"] == []

    asyncio.run(main())


def test_a_replica_that_keeps_dying_backs_off_and_healthz_says_crash_loop():
    async def main():
        async with ServedIngress(POISON) as ingress:
            sup = ingress.supervisor
            # Each poison request kills both replicas once (it runs on one, then on the other).
            for _ in range(3):
                await sup.wait_ready()
                events = await asyncio.wait_for(_events(sup.router.submit({"text": "poison"})), 60)
                assert events[-1].exc_type == "ReplicaDied"
            crash = [c for c in sup.children if c.stage == "crash"]
            while sum(c.restarts for c in crash) < 6:  # the supervisor has seen both deaths
                await asyncio.sleep(0.02)
            health = ingress.health()
            assert health["status"] == "degraded"
            assert health["crash_loop"] == ["crash#0", "crash#1"]
            # Three deaths in a row each: the third restart waited 4x the first one's delay.
            assert [c.streak for c in crash] == [3, 3]
            await sup.wait_ready()  # it comes back all the same, and serves
            ok = await asyncio.wait_for(_events(sup.router.submit({"text": "fine"})), 30)
            assert ok[-1].type == "done"

    asyncio.run(main())


def test_a_stopped_replica_is_marked_down_and_its_work_completes_elsewhere():
    async def main():
        sup = await _started(SLOW, heartbeat=0.1)
        try:
            handles = [sup.router.submit({"n": 20, "delay": 0.2}) for _ in range(6)]
            await asyncio.sleep(0.3)  # work is in flight on both replicas of `slow`
            stopped = _child(sup, "slow", 0).process
            os.kill(stopped.pid, signal.SIGSTOP)
            results = await asyncio.wait_for(asyncio.gather(*(_events(h) for h in handles)), 60)
            for events in results:
                assert events[-1].type == "done", events[-1]
                assert [e.value for e in events if e.type == "output"] == [sum(i * 10 for i in range(20))]
            assert any(e.what == "redispatch" and e.stage == "slow" for e in sup.router.core.story())
            # Marked down and killed by the supervisor (it was stopped: it could not exit itself).
            assert await asyncio.wait_for(stopped.wait(), 30) == -signal.SIGKILL
            await sup.wait_ready()
            assert sup.router.silent == {}
        finally:
            await sup.stop()

    asyncio.run(main())


def test_healthz_names_a_silent_replica():
    async def main():
        async with ServedIngress(SLOW, heartbeat=0.1, restart=False) as ingress:
            os.kill(_child(ingress.supervisor, "slow", 1).process.pid, signal.SIGSTOP)
            while not ingress.router.silent:
                await asyncio.sleep(0.05)
            health = ingress.health()
            assert health["status"] == "degraded" and health["silent"] == ["slow#1"]
            assert health["replicas"]["slow"] == {"ready": 1, "desired": 2}

    asyncio.run(main())
