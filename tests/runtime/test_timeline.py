"""Request timelines (``altoflow.runtime.timeline``): the recorder's bounds, the document it
builds, and what the served router records of a streamed request against a ``--barrier`` one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from altoflow import Pipeline, stage
from altoflow.compiler import load_target
from altoflow.runtime import timeline as tl
from altoflow.runtime.supervisor import Supervisor

TRICKLE = str(Path(__file__).resolve().parent.parent / "pipelines" / "trickle.py")


# -- the recorder, by itself ---------------------------------------------------------------------


def test_recording_n_plus_one_requests_keeps_the_n_most_recent():
    rec = tl.TimelineRecorder(requests=3)
    for key in range(4):
        assert rec.begin(key, f"r{key}") is not None
        rec.record(key, 1.0, tl.code(tl.DISPATCH, 7), (key,))
        rec.end(key, "done")
    assert rec.names() == ["r1", "r2", "r3"]
    assert rec.get("r0") is None and rec.get("r3").entries() == [(1.0, tl.DISPATCH, 7, 0, (3,))]
    assert "3 most recent" in rec.missing("r0")


def test_a_request_pushed_out_while_it_runs_stops_being_recorded():
    rec = tl.TimelineRecorder(requests=1)
    first = rec.begin(1, "a")
    rec.begin(2, "b")
    rec.record(1, 1.0, tl.code(tl.DISPATCH, 0), (1,))
    assert len(first) == 0 and list(rec.live) == [2]


def test_the_recorder_off_records_nothing():
    rec = tl.TimelineRecorder(requests=0)
    assert rec.begin(1, "a") is None
    rec.record(1, 1.0, tl.code(tl.DISPATCH, 0), (1,))
    assert rec.live == {} and rec.names() == []
    assert "--timeline-requests 0" in rec.missing("a")


def test_past_its_entry_limit_a_recording_stops_and_says_truncated():
    rec = tl.TimelineRecorder(entries=2)
    rec.begin(1, "a")
    for i in range(5):
        rec.record(1, float(i), tl.code(tl.OUTPUT, 0), (1, i))
    assert len(rec.get("a")) == 2 and rec.get("a").truncated


def test_every_n_records_one_request_in_n():
    rec = tl.TimelineRecorder(every=2)
    assert [rec.begin(k, str(k)) is not None for k in range(4)] == [True, False, True, False]
    assert "one request in 2" in rec.missing("1")


@pytest.mark.parametrize("bad", [dict(requests=-1), dict(entries=0), dict(every=0)])
def test_bad_bounds_are_refused(bad):
    with pytest.raises(ValueError, match="timeline"):
        tl.TimelineRecorder(**bad)


@stage(fanout="item")
async def items(n: int):
    for i in range(n):
        yield i


@stage
async def double(items: int) -> int:
    return 2 * items


def test_the_document_pairs_dispatches_with_acks_and_gives_outputs_to_their_invocation():
    plan = Pipeline([items, double], name="p").compiled.plan
    rec = tl.Recording(5, "req", limit=100, started=10.0)
    R = 5
    ok, dropped = tl.STATUS_CODES["ok"], tl.STATUS_CODES["dropped"]
    for t, kind, rid, status, anc in [
        (10.0, tl.DISPATCH, 0, 0, (R,)),
        (10.1, tl.OUTPUT, 0, 0, (R, 0)),
        (10.1, tl.DISPATCH, 1, 0, (R, 0)),
        (10.2, tl.OUTPUT, 0, 0, (R, 1)),
        (10.2, tl.OUTPUT, 1, 0, (R, 0)),
        (10.2, tl.ACK, 1, ok, (R, 0)),
        (10.3, tl.ACK, 0, dropped, (R,)),
        (10.3, tl.DISPATCH, 1, 0, (R, 1)),
    ]:
        rec.add(t, tl.code(kind, rid, status), anc)
    rec.end("done", 10.4)
    doc = tl.timeline_json(rec, plan, {0: ("items", 0), 1: ("double", 0)}.__getitem__)
    assert doc["request_id"] == "req" and doc["outcome"] == "done" and doc["duration_s"] == 0.4
    assert [s["name"] for s in doc["stages"]] == ["items", "double"]
    fan, first, second = doc["invocations"]
    assert (fan["stage"], fan["start_s"], fan["end_s"], fan["outputs_s"]) == ("items", 0.0, 0.3, [0.1, 0.2])
    assert fan["status"] == "dropped"
    assert (first["ancestry"], first["end_s"], first["outputs_s"], first["status"]) == (
        {"item": 0}, 0.2, [0.2], "ok")
    assert (second["ancestry"], second["end_s"], second["status"]) == ({"item": 1}, None, None)


# -- the served router ----------------------------------------------------------------------------


def _served_timeline(barrier: bool, recorder: tl.TimelineRecorder | None = None):
    compiled = load_target(TRICKLE).compiled

    async def serve():
        async with Supervisor(compiled, TRICKLE, barrier=barrier, inline=frozenset({"all"}),
                              timeline=recorder) as sup:
            await sup.wait_ready()
            stream = sup.router.submit({"n": 4, "pause": 0.05}, request_id="trickle-1")
            events = [e async for e in stream]
            return events, sup.router.timeline_of("trickle-1"), sup.router

    return asyncio.run(asyncio.wait_for(serve(), 60))


def _fanout_and_downstream(doc):
    (fan,) = [i for i in doc["invocations"] if i["stage"] == "claims"]
    verifies = [i for i in doc["invocations"] if i["stage"] == "verify"]
    return fan, verifies


def test_a_streamed_request_starts_downstream_items_before_its_fanout_ends():
    events, doc, _ = _served_timeline(barrier=False)
    assert events[-1].type == "done" and doc["outcome"] == "done" and not doc["truncated"]
    assert [e.value for e in events if e.stage == "total"] == [0 + 10 + 20 + 30]
    fan, verifies = _fanout_and_downstream(doc)
    assert len(fan["outputs_s"]) == 4 and len(verifies) == 4
    assert {tuple(v["ancestry"].items()) for v in verifies} == {(("claim", i),) for i in range(4)}
    assert all(v["end_s"] is not None and v["outputs_s"] for v in verifies)
    assert min(v["start_s"] for v in verifies) < fan["end_s"]  # streaming: overlapped
    assert [i["kind"] for i in doc["invocations"] if i["stage"] == "total"].count("group") == 1


def test_under_barrier_no_downstream_item_starts_before_its_fanout_ends():
    events, doc, _ = _served_timeline(barrier=True)
    assert events[-1].type == "done" and doc["outcome"] == "done"
    fan, verifies = _fanout_and_downstream(doc)
    assert len(verifies) == 4
    assert min(v["start_s"] for v in verifies) >= fan["end_s"]


def test_a_router_with_timelines_off_records_nothing():
    events, doc, router = _served_timeline(barrier=False, recorder=tl.TimelineRecorder(requests=0))
    assert events[-1].type == "done"
    assert doc is None and router.timeline.live == {} and router.timeline.names() == []
