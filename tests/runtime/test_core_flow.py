"""The router core's flow control, scripted event by event: fan-outs paced by credit, queues
shared round-robin between requests, and requests paused while their consumer is behind (also
across the death of the aggregate replica holding their group)."""

from __future__ import annotations

import pytest

from altoflow import Pipeline, ops, stage
from altoflow.runtime.core import (
    Cancel, Emit, Finish, Flush, FlushDone, Grant, Invoke, Open, Pause, ReplicaDown, ReplicaUp,
    Resume, RouterCore, Submit,
)


@stage(fanout="item", output=False)
async def items(n: int):
    for i in range(n):
        yield i


@stage(aggregate=ops.sum)
def total(items: int) -> int:
    return items


@stage(output=True)
async def shown(items: int) -> int:
    return items


KEYED = Pipeline([items, total], name="keyed").compiled.plan  # items -> total (concurrency 1)
SHOWN = Pipeline([items, shown], name="shown").compiled.plan  # items -> shown (an output)

A, B = 1, 2
GEN, AGG = 0, 1  # replica ids


def _core(plan, window: int | None = 4, credit: int | None = 2) -> RouterCore:
    core = RouterCore(plan, seed=1, fanout_window=window, fanout_credit=credit)
    for rid, name in enumerate(plan.names):
        assert core.handle(ReplicaUp(rid, name, 0)) == []
    return core


def _kinds(out) -> list[str]:
    return [type(i).__name__ for i in out]


def _grants(out) -> int:
    return sum(1 for i in out if type(i) is Grant)


def test_a_fan_out_gets_credit_only_as_its_items_leave_the_queue():
    core = _core(KEYED)
    assert core.handle(Submit(A, {"n": 100})) == [Invoke(GEN, "items", (A,), {"n": 100})]
    # The first item goes to the aggregate at once (its one credit), the next ones wait.
    out = core.output(GEN, "items", (A, 0), "0")
    assert out == [Invoke(AGG, "total", (A, 0), {"items": "0"})]
    grants = 0
    for i in range(1, 4):
        grants += _grants(core.output(GEN, "items", (A, i), str(i)))
    # Window 4: the 3 queued items and nothing more may be outstanding, so no credit yet.
    assert grants == 0 and core.statistics().queued["total"] == 3
    # Each item that leaves the queue frees a place; credit comes two at a time, once two
    # places are free (2 queued and none on the way: room for 2 more).
    out = core.ack(AGG, "total", (A, 0), "ok")
    assert out == [Invoke(AGG, "total", (A, 1), {"items": "1"}), Grant(GEN, "items", (A,))]
    out = core.ack(AGG, "total", (A, 1), "ok")
    assert out == [Invoke(AGG, "total", (A, 2), {"items": "2"})]  # 1 queued, 2 may come
    assert core.statistics().queued_peak == 3


def test_queued_work_is_served_round_robin_across_requests():
    core = _core(KEYED, window=None)
    core.handle(Submit(A, {"n": 10}))
    core.handle(Submit(B, {"n": 10}))
    invoked = []
    for i in range(4):
        invoked += core.output(GEN, "items", (A, i), "a")
    for i in range(2):
        invoked += core.output(GEN, "items", (B, i), "b")
    assert [i.ancestry for i in invoked] == [(A, 0)]
    order = []
    for _ in range(5):
        out = core.ack(AGG, "total", order[-1] if order else (A, 0), "ok")
        order += [i.ancestry for i in out if type(i) is Invoke]
    # B's two items do not wait for A's backlog: the turns alternate.
    assert order == [(A, 1), (B, 0), (A, 2), (B, 1), (A, 3)]


def test_a_paused_request_s_work_waits_and_its_fan_outs_get_no_credit():
    core = _core(SHOWN, window=4, credit=2)
    assert SHOWN.stage("shown").concurrency == 64
    core.handle(Submit(A, {"n": 10}))
    core.handle(Submit(B, {"n": 10}))
    assert core.handle(Pause(A)) == []
    out = []
    for i in range(4):
        out += core.output(GEN, "items", (A, i), str(i))
    assert out == []  # nothing of A is dispatched, and no credit comes
    assert core.statistics().queued["shown"] == 4 and core.statistics().paused == 1
    # B is not held up.
    out = core.output(GEN, "items", (B, 0), "b")
    assert _kinds(out) == ["Invoke"] and out[0].ancestry == (B, 0)
    out = core.output(GEN, "items", (B, 1), "b")
    assert _kinds(out) == ["Invoke", "Grant"] and out[1] == Grant(GEN, "items", (B,))
    # Resumed: its queued work goes on, and so does its credit.
    out = core.handle(Resume(A))
    assert [i.ancestry for i in out if type(i) is Invoke] == [(A, 0), (A, 1), (A, 2), (A, 3)]
    assert _grants(out) == 2 and all(g.ancestry == (A,) for g in out if type(g) is Grant)
    assert core.statistics().paused == 0
    assert [e.what for e in core.story(A)] == ["pause", "resume"]


def test_a_paused_request_s_group_is_replayed_on_the_next_replica_once_it_resumes():
    core = _core(KEYED)
    core.handle(Submit(A, {"n": 3}))
    core.output(GEN, "items", (A, 0), 10)
    core.output(GEN, "items", (A, 1), 20)
    out = core.ack(AGG, "total", (A, 0), "ok")
    assert out == [Invoke(AGG, "total", (A, 1), {"items": 20}), Grant(GEN, "items", (A,))]
    assert core.handle(Pause(A)) == []
    core.output(GEN, "items", (A, 2), 30)  # queued: A is paused
    # The aggregate's replica dies with A's group on it; the next one comes up while A is paused.
    assert core.handle(ReplicaDown(AGG)) == []
    assert core.handle(ReplicaUp(9, "total", 0)) == []  # nothing of A goes out while paused
    # The fan-out ends: its group is opened on the new replica (a group message, not work).
    assert core.ack(GEN, "items", (A,), "ok") == [Open(9, "total", (A,))]
    out = core.handle(Resume(A))
    # The replay, in the order first sent, then what waited.
    assert [i.ancestry for i in out if type(i) is Invoke] == [(A, 0)]
    seen = [(A, 0)]
    while True:
        nxt = core.ack(9, "total", seen[-1], "ok")
        invokes = [i.ancestry for i in nxt if type(i) is Invoke]
        if not invokes:
            break
        seen += invokes
    assert seen == [(A, 0), (A, 1), (A, 2)]
    flush = [i for i in nxt if type(i) is Flush]
    assert flush == [Flush(9, "total", (A,), True)]
    assert core.output(9, "total", (A,), 60) == [Emit(A, "total", {}, 60)]
    assert core.handle(FlushDone(9, "total", (A,), "ok")) == [Finish(A)]
    assert core.requests == {} and core.replay_buffered == 0 and core.paused == set()
    assert all(not r.queue for r in core.replicas.values())


def test_a_cancelled_paused_request_leaves_nothing_queued():
    core = _core(SHOWN)
    core.handle(Submit(A, {"n": 10}))
    core.handle(Pause(A))
    for i in range(3):
        core.output(GEN, "items", (A, i), i)
    out = core.handle(Cancel(A))
    assert _kinds(out) == ["Abort"]
    stats = core.statistics()
    assert sum(stats.queued.values()) == 0 and stats.paused == 0 and core.requests == {}


@pytest.mark.parametrize("window, credit", [(0, None), (4, 5)])
def test_a_window_without_room_for_credit_is_refused(window, credit):
    with pytest.raises(ValueError, match="fanout_credit <= fanout_window"):
        RouterCore(KEYED, fanout_window=window, fanout_credit=credit)


@stage(fanout="item", output=False)
def listed(n: int):  # a sync generator: one invocation at a time (concurrency 1)
    yield from range(n)


@stage(output=True)
async def echo(listed: int) -> int:
    return listed


LENDING = Pipeline([listed, echo], name="lending").compiled.plan


def test_a_fan_out_that_waits_for_credit_lends_its_place_to_another_request():
    core = _core(LENDING, window=4, credit=2)
    assert LENDING.stage("listed").concurrency == 1
    core.handle(Submit(A, {"n": 10}))
    assert core.handle(Submit(B, {"n": 10})) == []  # the one place is taken
    core.handle(Pause(A))  # A's client is behind
    out = []
    for i in range(4):
        out += core.output(GEN, "listed", (A, i), i)
    # A has sent its window and waits: B's fan-out runs in its place.
    assert out == [Invoke(GEN, "listed", (B,), {"n": 10})]
    out = core.handle(Resume(A))
    assert _grants(out) == 2 and core.replicas[GEN].credits == -1  # A's place is taken back
    assert core.ack(GEN, "listed", (B,), "ok") == [Finish(B)]  # it made nothing
    assert core.replicas[GEN].credits == 0
    core.ack(GEN, "listed", (A,), "ok")
    assert core.replicas[GEN].credits == 1  # all its places back, none counted twice
