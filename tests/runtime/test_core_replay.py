"""The router core replays a dead aggregate replica's groups on the slot's next replica.

Scripted event by event, as tests/runtime/test_core_scripted.py does: the inputs a group was
sent (acknowledged or in flight) go again, in their order, to the new replica, after its Open;
a Flush that was sent goes again once they are folded; outputs that went on already are not
emitted twice; past the replay limit a group fails its request as before, naming the stage.
"""

from __future__ import annotations

from altoflow import Pipeline, ops, stage
from altoflow.runtime.core import (
    Finish, Flush, FlushDone, Invoke, Open, ReplicaDown, ReplicaUp, RouterCore, Submit,
)


@stage(fanout="item", output=False)
async def items(n: int):
    for i in range(n):
        yield i


@stage(aggregate=ops.sum, concurrency=2)
def total(items: int) -> int:
    return items


@stage(aggregate=ops.any)
def odd(items: int) -> bool:
    return items % 2 == 1


@stage(aggregate=ops.sum, replicas=4)
def wide(items: int) -> int:
    return items


SUM = Pipeline([items, total], name="sum").compiled.plan
ANY = Pipeline([items, odd], name="any").compiled.plan

R = 7


def _core(plan, agg: str, **kw) -> RouterCore:
    core = RouterCore(plan, seed=1, **kw)
    assert core.handle(ReplicaUp(0, "items", 0)) == []
    assert core.handle(ReplicaUp(1, agg, 0)) == []
    return core


def _whats(core: RouterCore, *whats: str) -> list[tuple]:
    return [(e.what, e.stage, e.ancestry, e.detail) for e in core.story(R) if e.what in whats]


def _assert_nothing_left(core: RouterCore) -> None:
    assert core.requests == {} and not core.parked and core.replay_buffered == 0
    assert all(not r.groups and not r.queue and not r.inflight for r in core.replicas.values())


def _rebuilt_on(replica: int) -> list:
    """What a new replica of ``total`` is sent first for R's group of a, b, c: the Open, then
    the inputs in the order first sent, as far as its two credits go."""
    return [Open(replica, "total", (R,)),
            Invoke(replica, "total", (R, 0), {"items": "a"}),
            Invoke(replica, "total", (R, 1), {"items": "b"})]


def test_a_dead_replica_s_group_is_replayed_in_order_after_its_open():
    core = _core(SUM, "total")
    core.handle(Submit(R, {"n": 3}))
    assert core.output(0, "items", (R, 0), "a") == [Invoke(1, "total", (R, 0), {"items": "a"})]
    assert core.output(0, "items", (R, 1), "b") == [Invoke(1, "total", (R, 1), {"items": "b"})]
    assert core.output(0, "items", (R, 2), "c") == []  # no credit: queued on the replica
    assert core.ack(0, "items", (R,), "ok") == [Open(1, "total", (R,))]
    assert core.ack(1, "total", (R, 0), "ok") == [Invoke(1, "total", (R, 2), {"items": "c"})]
    assert core.statistics().replay_buffered == 3

    # Replica 1 dies with (R, 1) and (R, 2) in flight, after (R, 0) was folded there.
    assert core.handle(ReplicaDown(1)) == []
    assert _whats(core, "replay") == [("replay", "total", (R,), "3")]
    # The new replica starts empty: the Open, then every input once, in the order first sent.
    assert core.handle(ReplicaUp(2, "total", 0)) == _rebuilt_on(2)
    assert core.ack(2, "total", (R, 0), "ok") == [Invoke(2, "total", (R, 2), {"items": "c"})]
    assert core.ack(2, "total", (R, 1), "ok") == []
    assert core.ack(2, "total", (R, 2), "ok") == [Flush(2, "total", (R,), True)]
    assert core.statistics().replay_buffered == 3  # kept until the flush is done
    assert core.output(2, "total", (R,), "sum")[0].payload == "sum"
    assert core.handle(FlushDone(2, "total", (R,), "ok")) == [Finish(R)]
    _assert_nothing_left(core)


def test_a_replay_replica_that_dies_with_replayed_inputs_queued_replays_each_once():
    # Found by Hypothesis (test_core_sim, kills): the next replica died too, with the first
    # replay's last input still queued for a credit; that input went twice to the third
    # replica (once queued, once replayed), and a collect got it twice.
    core = _core(SUM, "total")
    core.handle(Submit(R, {"n": 3}))
    for i, v in enumerate("abc"):
        core.output(0, "items", (R, i), v)
    core.ack(0, "items", (R,), "ok")
    for i in range(3):
        core.ack(1, "total", (R, i), "ok")
    assert core.handle(ReplicaDown(1)) == []
    assert core.handle(ReplicaUp(2, "total", 0)) == _rebuilt_on(2)  # (R, 2) waits for a credit
    assert core.handle(ReplicaDown(2)) == []
    assert core.handle(ReplicaUp(3, "total", 0)) == _rebuilt_on(3)
    assert core.ack(3, "total", (R, 0), "ok") == [Invoke(3, "total", (R, 2), {"items": "c"})]
    assert core.ack(3, "total", (R, 1), "ok") == []
    assert core.ack(3, "total", (R, 2), "ok") == [Flush(3, "total", (R,), True)]  # once each
    core.output(3, "total", (R,), "sum")
    assert core.handle(FlushDone(3, "total", (R,), "ok")) == [Finish(R)]
    _assert_nothing_left(core)


def test_a_flush_sent_to_the_dead_replica_goes_again_after_the_replayed_inputs():
    core = _core(SUM, "total")
    core.handle(Submit(R, {"n": 1}))
    core.output(0, "items", (R, 0), "a")
    core.ack(0, "items", (R,), "ok")
    assert core.ack(1, "total", (R, 0), "ok") == [Flush(1, "total", (R,), True)]

    # It dies before its FlushDone: the group is rebuilt, and flushed only after the replay of
    # (R, 0) is acknowledged (a replica flushes at once but folds when the invocation returns).
    assert core.handle(ReplicaDown(1)) == []
    assert core.handle(ReplicaUp(2, "total", 0)) == [
        Open(2, "total", (R,)), Invoke(2, "total", (R, 0), {"items": "a"})]
    assert core.ack(2, "total", (R, 0), "ok") == [Flush(2, "total", (R,), True)]
    out = core.output(2, "total", (R,), "a-sum")
    assert [(e.stage, e.payload) for e in out] == [("total", "a-sum")]
    assert core.handle(FlushDone(2, "total", (R,), "ok")) == [Finish(R)]
    _assert_nothing_left(core)


def test_an_early_decided_group_that_had_emitted_does_not_emit_twice():
    core = _core(ANY, "odd")
    core.handle(Submit(R, {"n": 3}))
    core.output(0, "items", (R, 0), "x0")
    core.ack(0, "items", (R,), "ok")  # Open
    core.ack(1, "odd", (R, 0), "ok")
    core.output(0, "items", (R, 1), "x1")
    core.ack(1, "odd", (R, 1), "ok")
    # The group decided and its result went out before its flush.
    assert [e.payload for e in core.output(1, "odd", (R,), True)] == [True]
    assert core.statistics().replay_buffered == 0  # its result is out: its inputs are freed
    core.output(0, "items", (R, 2), "x2")  # in flight at the death

    assert core.handle(ReplicaDown(1)) == []
    # Only the input in flight goes again (its invocation must still run once).
    assert core.handle(ReplicaUp(2, "odd", 0)) == [
        Open(2, "odd", (R,)), Invoke(2, "odd", (R, 2), {"items": "x2"})]
    assert core.ack(2, "odd", (R, 2), "ok") == [Flush(2, "odd", (R,), True)]
    # The new replica's answer for the group (here its empty-group False) is not emitted again.
    assert core.output(2, "odd", (R,), False) == []
    assert _whats(core, "repeat") == [("repeat", "odd", (R,), None)]
    assert core.handle(FlushDone(2, "odd", (R,), "ok")) == [Finish(R)]
    _assert_nothing_left(core)


def test_past_the_replay_limit_a_dead_replica_s_group_fails_its_request_naming_the_stage():
    core = _core(SUM, "total", replay_limit=1)
    core.handle(Submit(R, {"n": 2}))
    core.output(0, "items", (R, 0), "a")
    core.output(0, "items", (R, 1), "b")  # the second input finds the limit reached
    assert core.statistics().replay_buffered == 0  # the group's inputs are no longer kept
    assert _whats(core, "over-limit") == [("over-limit", "total", (R,), None)]

    out = [i for i in core.handle(ReplicaDown(1)) if type(i) is Finish]  # and an Abort to `items`
    assert len(out) == 1
    error = out[0].error
    assert error.stage == "total" and error.exc_type == "ReplicaDied"
    assert "died" in error.detail and "--replay-limit" in error.detail and "1 inputs" in error.detail
    assert core.requests == {} and not core.parked and core.replay_buffered == 0


def test_with_replay_off_a_dead_replica_s_group_fails_its_request():
    core = _core(SUM, "total", replay_limit=0)
    core.handle(Submit(R, {"n": 1}))
    core.output(0, "items", (R, 0), "a")
    out = [i for i in core.handle(ReplicaDown(1)) if type(i) is Finish]
    assert len(out) == 1 and out[0].error.stage == "total"
    assert core.replay_buffered == 0


def test_a_replica_that_cannot_die_alone_keeps_no_replay_log():
    # An inline replica (in the router's process): its death is the router's.
    core = RouterCore(SUM, seed=1)
    core.handle(ReplicaUp(0, "items", 0))
    core.handle(ReplicaUp(1, "total", 0, replay=False))
    core.handle(Submit(R, {"n": 3}))
    for i in range(3):
        core.output(0, "items", (R, i), i)
    assert core.statistics().replay_buffered == 0 and not core.requests[R].logs
    out = [i for i in core.handle(ReplicaDown(1)) if type(i) is Finish]
    assert len(out) == 1 and out[0].error.stage == "total"
    assert core.requests == {} and core.replay_buffered == 0


def test_a_dropped_input_is_not_replayed():
    core = _core(SUM, "total")
    core.handle(Submit(R, {"n": 2}))
    core.output(0, "items", (R, 0), "a")
    core.output(0, "items", (R, 1), "b")
    core.ack(0, "items", (R,), "ok")
    assert core.ack(1, "total", (R, 0), "dropped") == []
    assert core.replay_buffered == 1
    core.handle(ReplicaDown(1))
    assert core.handle(ReplicaUp(2, "total", 0)) == [
        Open(2, "total", (R,)), Invoke(2, "total", (R, 1), {"items": "b"})]


def test_replayed_work_for_a_slot_goes_to_that_slot():
    # Keyed work parked while its slot is down must wait for that slot, not the slot its
    # item's (longer) ancestry would hash to.
    plan = Pipeline([items, wide], name="wide").compiled.plan
    core = RouterCore(plan, seed=1)
    core.handle(ReplicaUp(0, "items", 0))
    for slot in range(4):
        core.handle(ReplicaUp(10 + slot, "wide", slot))
    for r in range(20):
        core.handle(Submit(r, {"n": 3}))
    down = [r for r in range(20) if core._slot(plan.stage("wide"), (r,)) == 0]
    assert down, "some request's group lives on slot 0"
    core.handle(ReplicaDown(10))
    for r in range(20):
        for i in range(3):
            core.output(0, "items", (r, i), i)
    # Only slot 0 is down, so only its groups' items wait, and they wait for slot 0.
    assert set(core.parked) == {("wide", 0)}
    assert len(core.parked[("wide", 0)]) == 3 * len(down)
