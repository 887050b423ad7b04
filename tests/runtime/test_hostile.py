"""Whatever a stage raises, returns or does to its replica, the request gets an answer and the
stage keeps serving: errors that cannot be encoded as they are, and inputs that kill replicas."""

from __future__ import annotations

import asyncio
from pathlib import Path

from altoflow.compiler import load_target
from altoflow.runtime.supervisor import Supervisor

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
HOSTILE = str(PIPELINES / "hostile.py")
POISON = str(PIPELINES / "poison.py")


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
