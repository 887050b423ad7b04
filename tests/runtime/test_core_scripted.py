"""The router core, scripted event by event: faults that the served tests reach only by ``kill -9``.

Each test compiles a small pipeline, announces replicas by hand, feeds the core the events a
replica would send, and checks the instructions it answers with and the story it keeps. Nothing
runs: payloads are plain strings that the core only carries.
"""

from __future__ import annotations

import pytest

from altoflow import Pipeline, ops, stage
from altoflow.runtime.core import (
    Abort, Ack, Cancel, CoreError, ErrorInfo, Finish, Flush, FlushDone, Invoke, Open, Output,
    ReplicaDown, ReplicaUp, RouterCore, StoryEntry, Submit,
)


@stage(fanout="item", output=False)
async def items(n: int):
    for i in range(n):
        yield i


@stage(replicas=2, concurrency=8, output=False)
async def slow(items: int) -> int:
    return items


@stage(aggregate=ops.sum)
def total(slow: int) -> int:
    return slow


@stage(aggregate=ops.sum)
def direct_total(items: int) -> int:
    return items


# items -> direct_total: one keyed aggregate, per request.
KEYED = Pipeline([items, direct_total], name="keyed").compiled.plan
# items -> slow (two stateless replicas) -> total.
SPREAD = Pipeline([items, slow, total], name="spread").compiled.plan

R = 7  # the request id of every test


def _core(plan, replicas: list[tuple[int, str, int]]) -> RouterCore:
    core = RouterCore(plan, seed=1)
    for rid, name, slot in replicas:
        assert core.handle(ReplicaUp(rid, name, slot)) == []
    return core


def _whats(core: RouterCore) -> list[tuple]:
    """The story of request R, without the replicas' own entries."""
    return [(e.what, e.stage, e.ancestry, e.replica) for e in core.story(R)]


def _assert_nothing_left(core: RouterCore) -> None:
    assert core.requests == {}
    assert list(core.progress.requests()) == []
    assert not core.parked
    assert all(not r.groups and not r.queue and not r.inflight for r in core.replicas.values())


def test_keyed_work_parks_while_its_replica_is_down_and_goes_to_the_next_one():
    core = _core(KEYED, [(0, "items", 0), (1, "direct_total", 0)])
    assert core.handle(Submit(R, {"n": 2})) == [Invoke(0, "items", (R,), {"n": 2})]
    assert core.handle(ReplicaDown(1)) == []

    # The aggregate's only slot has no replica: its items and its group's Open wait.
    assert core.output(0, "items", (R, 0), "a") == []
    assert core.output(0, "items", (R, 1), "b") == []
    assert core.ack(0, "items", (R,), "ok") == []
    assert [len(q) for q in core.parked.values()] == [3]

    # The slot's next replica gets the Open at once, and the items in the order they came, as
    # its credits allow (one: the aggregate's concurrency).
    assert KEYED.stage("direct_total").concurrency == 1
    assert core.handle(ReplicaUp(2, "direct_total", 0)) == [
        Open(2, "direct_total", (R,)),
        Invoke(2, "direct_total", (R, 0), {"items": "a"}),
    ]
    assert not core.parked
    assert core.ack(2, "direct_total", (R, 0), "ok") == [Invoke(2, "direct_total", (R, 1), {"items": "b"})]
    assert core.ack(2, "direct_total", (R, 1), "ok") == [Flush(2, "direct_total", (R,), True)]
    emitted = core.output(2, "direct_total", (R,), "a+b")
    assert [(i.stage, i.ancestry, i.payload) for i in emitted] == [("direct_total", {}, "a+b")]
    assert core.handle(FlushDone(2, "direct_total", (R,), "ok")) == [Finish(R)]

    assert _whats(core) == [
        ("park", "direct_total", (R, 0), None),
        ("park", "direct_total", (R, 1), None),
        ("open", "direct_total", (R,), None),
        ("park", "direct_total", (R,), None),
        ("unpark", "direct_total", (R, 0), 2),
        ("unpark", "direct_total", (R, 1), 2),
        ("unpark", "direct_total", (R,), 2),
        ("flush", "direct_total", (R,), 2),
        ("finish", None, None, None),
    ]
    assert [(e.what, e.replica) for e in core.story() if e.request is None] == [
        ("replica-up", 0), ("replica-up", 1), ("replica-down", 1), ("replica-up", 2)]
    _assert_nothing_left(core)


def test_a_request_that_ends_while_its_keyed_work_is_parked_leaves_nothing_for_the_next_replica():
    # Found by Hypothesis (test_core_sim, pauses and kills): a request failed while its group's
    # only slot was down, and the slot's next replica was handed the dead request's parked items.
    core = _core(KEYED, [(0, "items", 0), (1, "direct_total", 0)])
    core.handle(Submit(R, {"n": 3}))
    assert core.handle(ReplicaDown(1)) == []
    assert core.output(0, "items", (R, 0), "a") == []
    assert core.output(0, "items", (R, 1), "b") == []
    assert [len(q) for q in core.parked.values()] == [2]  # its two items

    assert core.handle(Cancel(R)) == [Abort(0, R)]
    assert not core.parked
    assert core.handle(ReplicaUp(2, "direct_total", 0)) == []
    assert core.ack(0, "items", (R,), "ok") == []  # the fan-out's late acknowledgement
    _assert_nothing_left(core)

    # The next request's group goes to the new replica as usual.
    core.handle(Submit(R + 1, {"n": 1}))
    assert core.output(0, "items", (R + 1, 0), "c") == [
        Invoke(2, "direct_total", (R + 1, 0), {"items": "c"})]


def test_a_dead_stateless_replica_s_work_is_sent_again_once_to_the_other_replica():
    core = _core(SPREAD, [(0, "items", 0), (1, "slow", 0), (2, "slow", 1), (3, "total", 0)])
    core.handle(Submit(R, {"n": 6}))
    sent: dict[tuple, list[int]] = {}
    for i in range(6):
        for ins in core.output(0, "items", (R, i), f"v{i}"):
            assert type(ins) is Invoke and ins.stage == "slow" and ins.args == {"items": f"v{i}"}
            sent.setdefault(ins.ancestry, []).append(ins.replica)
    assert [ins.stage for ins in core.ack(0, "items", (R,), "ok")] == ["total"]  # its Open
    dead = sent[(R, 0)][0]
    other = 3 - dead
    on_dead = sorted(a for a, rids in sent.items() if rids == [dead])
    assert on_dead and len(on_dead) < 6, "both replicas have work in flight"

    # Nothing of the dead replica's work reached anyone: each input goes to the other replica.
    again = core.handle(ReplicaDown(dead))
    assert again == [Invoke(other, "slow", a, {"items": f"v{a[1]}"}) for a in on_dead]
    for ins in again:
        sent[ins.ancestry].append(ins.replica)

    # The rest of the run, all on the live replica; the request ends with nothing lost.
    to_total = []
    for anc in sorted(sent):
        to_total += core.output(other, "slow", anc, f"w{anc[1]}")
        to_total += core.ack(other, "slow", anc, "ok")
    out, summed = [], []
    while to_total:  # the aggregate takes one item at a time (its concurrency)
        ins = to_total.pop(0)
        assert type(ins) is Invoke and (ins.replica, ins.stage) == (3, "total")
        summed.append(ins.args["slow"])
        out = core.ack(3, "total", ins.ancestry, "ok")
        to_total += [i for i in out if type(i) is Invoke]
    assert sorted(summed) == sorted(f"w{a[1]}" for a in sent)
    assert out == [Flush(3, "total", (R,), True)]
    assert [i.payload for i in core.output(3, "total", (R,), "sum")] == ["sum"]
    assert core.handle(FlushDone(3, "total", (R,), "ok")) == [Finish(R)]

    assert sent == {a: ([dead, other] if a in on_dead else [other]) for a in sent}
    assert [(e.ancestry, e.replica) for e in core.story(R) if e.what == "redispatch"] == [
        (a, dead) for a in on_dead]
    _assert_nothing_left(core)


def test_a_dead_replica_s_work_that_had_produced_output_fails_the_request():
    core = _core(SPREAD, [(0, "items", 0), (1, "slow", 0), (2, "slow", 1), (3, "total", 0)])
    core.handle(Submit(R, {"n": 3}))
    # The fan-out has produced an item when its replica dies: it cannot be run again.
    [invoke] = core.output(0, "items", (R, 0), "v0")
    finish, *aborts = core.handle(ReplicaDown(0))
    assert finish == Finish(R, ErrorInfo("items", {}, "replica 0 died while running this item",
                                         "ReplicaDied"))
    assert aborts == [Abort(invoke.replica, R)]
    assert [e.what for e in core.story(R)][-3:] == ["lost", "fail", "abort"]
    assert core.ack(invoke.replica, "slow", (R, 0), "ok") == []
    _assert_nothing_left(core)


def test_cancel_in_the_middle_of_a_group_aborts_its_replicas_and_flushes_nothing():
    core = _core(KEYED, [(0, "items", 0), (1, "direct_total", 0)])
    core.handle(Submit(R, {"n": 3}))
    assert core.output(0, "items", (R, 0), "a") == [Invoke(1, "direct_total", (R, 0), {"items": "a"})]
    assert core.ack(1, "direct_total", (R, 0), "ok") == []
    core.output(0, "items", (R, 1), "b")

    # The fan-out is still running and the group holds state: both replicas drop the request.
    assert core.handle(Cancel(R)) == [Abort(0, R), Abort(1, R)]
    assert _whats(core)[-3:] == [("cancel", None, None, None), ("abort", "items", (R,), 0),
                                 ("abort", "direct_total", (R,), 1)]

    # What the replicas still send about it is dropped; their credits come back.
    late = (core.output(0, "items", (R, 2), "c") + core.ack(1, "direct_total", (R, 1), "dropped")
            + core.ack(0, "items", (R,), "ok"))
    assert late == []
    assert [r.credits for r in core.replicas.values()] == [
        KEYED.stage("items").concurrency, KEYED.stage("direct_total").concurrency]
    assert [e.what for e in core.story(R)].count("flush") == 0
    _assert_nothing_left(core)

    # The core keeps serving: the next request runs to the end on the same replicas.
    core.handle(Submit(R + 1, {"n": 0}))
    assert core.ack(0, "items", (R + 1,), "ok") == [Open(1, "direct_total", (R + 1,)),
                                                     Flush(1, "direct_total", (R + 1,), True)]


def test_a_group_that_fails_as_it_opens_fails_the_request_with_the_stage_s_error():
    core = _core(KEYED, [(0, "items", 0), (1, "direct_total", 0)])
    core.handle(Submit(R, {"n": 2}))
    core.output(0, "items", (R, 0), "a")
    assert core.ack(0, "items", (R,), "ok") == [Open(1, "direct_total", (R,))]

    error = ErrorInfo("direct_total", {}, "ValueError: create() needs a seed", "ValueError")
    assert core.handle(FlushDone(1, "direct_total", (R,), "failed", error)) == [
        Finish(R, error), Abort(1, R)]
    assert core.story(R)[-2:] == [
        StoryEntry(R, "direct_total", (R,), "fail", None, "ValueError: create() needs a seed"),
        StoryEntry(R, "direct_total", (R,), "abort", 1, None),
    ]
    assert core.ack(1, "direct_total", (R, 0), "ok") == []
    _assert_nothing_left(core)


# -- replica states ------------------------------------------------------------------------------


@pytest.mark.parametrize("event, name", [
    (Output(1, "direct_total", (R,), "x"), "Output"),
    (Ack(1, "direct_total", (R, 0), "ok"), "Ack"),
    (FlushDone(1, "direct_total", (R,), "ok"), "FlushDone"),
    (ReplicaDown(1), "ReplicaDown"),
])
def test_a_dead_replica_can_report_nothing(event, name):
    core = _core(KEYED, [(0, "items", 0), (1, "direct_total", 0)])
    core.handle(Submit(R, {"n": 1}))
    core.handle(ReplicaDown(1))
    refused = rf"replica 1 \(direct_total, slot 0\) is dead and cannot report {name}$"
    with pytest.raises(CoreError, match=refused):
        core.handle(event)


def test_an_event_from_a_replica_that_never_came_up_is_refused():
    core = _core(KEYED, [(0, "items", 0)])
    core.handle(Submit(R, {"n": 1}))
    with pytest.raises(CoreError, match="Ack from replica 5, which never reported ReplicaUp"):
        core.ack(5, "items", (R,), "ok")
    with pytest.raises(CoreError, match="announced twice"):
        core.handle(ReplicaUp(0, "items", 0))


def test_the_story_keeps_the_most_recent_entries():
    core = RouterCore(KEYED, story_length=4)
    for rid, name in enumerate(["items", "direct_total"]):
        core.handle(ReplicaUp(rid, name, 0))
    for r in range(3):
        core.handle(Submit(r, {"n": 0}))
        # No items: the group opens and is complete at once.
        assert core.ack(0, "items", (r,), "ok") == [Open(1, "direct_total", (r,)),
                                                     Flush(1, "direct_total", (r,), True)]
        assert core.handle(FlushDone(1, "direct_total", (r,), "ok")) == [Finish(r)]
    assert [(e.request, e.what) for e in core.story()] == [
        (1, "finish"), (2, "open"), (2, "flush"), (2, "finish")]
    assert core.story(0) == []
    assert core.story(2, 1) == core.story()
    assert core.story(1) == [StoryEntry(1, None, None, "finish")]


def test_an_item_that_kills_every_replica_it_runs_on_fails_after_poison_deaths():
    from altoflow.runtime.core import POISON_DEATHS

    core = _core(SPREAD, [(0, "items", 0), (1, "slow", 0), (2, "slow", 1), (3, "total", 0)])
    core.handle(Submit(R, {"n": 1}))
    [invoke] = core.output(0, "items", (R, 0), "v0")
    core.ack(0, "items", (R,), "ok")
    # It runs on one replica, which dies; the supervisor's restart comes back as a new id.
    replica, spare = invoke.replica, 4
    for death in range(1, POISON_DEATHS):
        assert core.handle(ReplicaUp(spare, "slow", core.replicas[replica].slot)) == []
        [again] = core.handle(ReplicaDown(replica))
        assert (type(again), again.ancestry) == (Invoke, (R, 0))
        replica, spare = again.replica, spare + 1
    finish, abort = core.handle(ReplicaDown(replica))[:2]
    assert finish == Finish(R, ErrorInfo(
        "slow", {"item": 0},
        f"stage 'slow' at {{'item': 0}}: {POISON_DEATHS} replicas died running this item (the last: "
        f"replica {replica}), so it is not run again; find out why it kills the process (os._exit, "
        f"a crash in a C extension, running out of memory)", "ReplicaDied"))
    assert type(abort) is Abort
    assert [e.what for e in core.story(R) if e.stage == "slow"].count("redispatch") == POISON_DEATHS - 1
    assert "poison" in [e.what for e in core.story(R)]
    assert core.poisoned == {"items": 0, "slow": 1, "total": 0}
