"""Rescaling a stage in the router core (``Rescale``), scripted event by event and simulated.

Checked: a keyed group that is open at a rescale stays whole on the slot it started on until
it closes; new groups hash over the new slots, and only the groups that rendezvous hashing
moves change slots; a removed slot's replica finishes what it holds and only then is
``Drained``; growing back over a draining slot keeps its replica; work parked for a removed
slot with no replica goes to the group's new slot; and under random interleavings, rescales,
and kills of draining replicas, results equal the evaluator's (tests/runtime/test_core_sim.py's
simulator, with rescale events).
"""

from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from altoflow import Pipeline, ops, stage
from altoflow.runtime.core import (
    CoreError, Drained, Finish, Flush, FlushDone, Invoke, Open, ReplicaDown, ReplicaUp, Rescale,
    RouterCore, Submit, _rendezvous,
)
from randompipes import build, pipelines
from test_core_sim import Sim, _KILLED, run_and_compare, run_killed_requests, without_delays


@stage(fanout="item", output=False)
async def items(n: int):
    for i in range(n):
        yield i


@stage(aggregate=ops.sum, concurrency=4)
def total(items: int) -> int:
    return items


@stage(concurrency=2)
def double(items: int) -> int:
    return 2 * items


SUM = Pipeline([items, total], name="sum").compiled.plan
MAP = Pipeline([items, double], name="map").compiled.plan


def _up(plan, agg: str, slots: int) -> RouterCore:
    core = RouterCore(plan, seed=1)
    core.handle(ReplicaUp(0, "items", 0))
    if slots > 1:
        core.handle(Rescale(agg, slots))
    for slot in range(slots):
        core.handle(ReplicaUp(10 + slot, agg, slot))
    return core


def _to(instructions, cls=Invoke) -> list[int]:
    """The replicas of the aggregate (or map) stage that ``instructions`` go to."""
    return [i.replica for i in instructions if type(i) is cls and i.stage != "items"]


def test_an_open_group_stays_whole_on_its_replica_across_a_rescale():
    core = _up(SUM, "total", 1)
    core.handle(Submit(1, {"n": 40}))
    for i in range(20):
        core.output(0, "items", (1, i), i)
    core.handle(Rescale("total", 3))
    core.handle(ReplicaUp(11, "total", 1))
    core.handle(ReplicaUp(12, "total", 2))
    # The group of request 1 began on replica 10: every later item of it goes there too.
    sent = []
    for i in range(20, 40):
        sent += _to(core.output(0, "items", (1, i), i))
    for i in range(40):
        sent += _to(core.ack(10, "total", (1, i), "ok"))
    assert set(sent) == {10}
    assert _to(core.ack(0, "items", (1,), "ok"), Open) == [10]
    # New groups go over all three slots, as rendezvous hashing over 3 says.
    for r in range(2, 40):
        out = core.handle(Submit(r, {"n": 1}))
        out += core.output(0, "items", (r, 0), 0)
        assert _to(out) == [10 + _rendezvous("total", (r,), 3)]
        core.ack(10 + _rendezvous("total", (r,), 3), "total", (r, 0), "ok")
    assert {10 + _rendezvous("total", (r,), 3) for r in range(2, 40)} == {10, 11, 12}


def test_only_the_groups_that_rendezvous_hashing_moves_change_slots():
    keys = [(r,) for r in range(400)]
    three = {k: _rendezvous("total", k, 3) for k in keys}
    four = {k: _rendezvous("total", k, 4) for k in keys}
    moved = [k for k in keys if three[k] != four[k]]
    assert moved and all(four[k] == 3 for k in moved)  # growing: only to the new slot
    assert 50 < len(moved) < 150  # about a quarter
    # The core routes new groups by exactly this, after a grow and after a shrink back.
    core = _up(SUM, "total", 3)
    core.handle(Rescale("total", 4))
    core.handle(ReplicaUp(13, "total", 3))
    for r in range(100):
        core.handle(Submit(r, {"n": 1}))
        assert _to(core.output(0, "items", (r, 0), 0)) == [10 + four[(r,)]]
        core.ack(10 + four[(r,)], "total", (r, 0), "ok")
        core.ack(0, "items", (r,), "ok")
        core.output(10 + four[(r,)], "total", (r,), 0)
        core.handle(FlushDone(10 + four[(r,)], "total", (r,), "ok"))
    assert core.requests == {}
    assert core.handle(Rescale("total", 3)) == [Drained(13, "total", 3)]  # it holds nothing
    for r in range(100, 200):
        core.handle(Submit(r, {"n": 1}))
        assert _to(core.output(0, "items", (r, 0), 0)) == [10 + three[(r,)]]
        core.ack(10 + three[(r,)], "total", (r, 0), "ok")


def test_a_removed_slot_finishes_its_groups_then_is_drained():
    core = _up(SUM, "total", 2)
    r = next(r for r in range(100) if _rendezvous("total", (r,), 2) == 1)
    core.handle(Submit(r, {"n": 3}))
    assert _to(core.output(0, "items", (r, 0), 0)) == [11]
    assert core.handle(Rescale("total", 1)) == []  # it holds a group: no Drained yet
    assert [s.state for s in core.scale("total")] == ["ready", "draining"]
    assert _to(core.output(0, "items", (r, 1), 1)) == [11]  # its open group's items still go there
    # A new group goes to slot 0 only.
    core.handle(Submit(1000, {"n": 1}))
    assert _to(core.output(0, "items", (1000, 0), 0)) == [10]
    assert core.ack(11, "total", (r, 0), "ok") == []
    assert _to(core.output(0, "items", (r, 2), 2)) == [11]
    core.ack(11, "total", (r, 1), "ok")
    core.ack(11, "total", (r, 2), "ok")
    assert core.ack(0, "items", (r,), "ok") == [Open(11, "total", (r,)), Flush(11, "total", (r,), True)]
    core.output(11, "total", (r,), 3)
    assert core.handle(FlushDone(11, "total", (r,), "ok")) == [Finish(r), Drained(11, "total", 1)]
    assert [s.state for s in core.scale("total")] == ["ready", "stopping"]
    assert 1 not in core.slots["total"]
    assert core.handle(ReplicaDown(11)) == []
    assert [s.state for s in core.scale("total")] == ["ready"]
    assert [e.what for e in core.story() if e.replica == 11 and e.request is None][-3:] == [
        "drain", "drained", "replica-down"]


def test_a_load_balanced_stage_s_removed_replica_takes_no_new_work_and_drains():
    core = RouterCore(MAP, seed=3)
    core.handle(ReplicaUp(0, "items", 0))
    core.handle(Rescale("double", 2))
    core.handle(ReplicaUp(10, "double", 0))
    core.handle(ReplicaUp(11, "double", 1))
    core.handle(Submit(1, {"n": 20}))
    sent = [_to(core.output(0, "items", (1, i), i)) for i in range(4)]
    assert {rid for s in sent for rid in s} == {10, 11}
    on_11 = [i for i, s in enumerate(sent) if s == [11]]
    assert core.handle(Rescale("double", 1)) == []
    later = []
    for i in range(4, 20):
        later += _to(core.output(0, "items", (1, i), i))
    out = []
    for i in on_11:
        out += core.ack(11, "double", (1, i), "ok")
    assert Drained(11, "double", 1) in out
    for i in range(20):
        if i not in on_11:
            later += _to(core.ack(10, "double", (1, i), "ok"))
    assert set(later) == {10}
    assert core.ack(0, "items", (1,), "ok") == [Finish(1)]


def test_growing_back_over_a_draining_slot_keeps_its_replica():
    core = _up(SUM, "total", 2)
    r = next(r for r in range(100) if _rendezvous("total", (r,), 2) == 1)
    core.handle(Submit(r, {"n": 2}))
    core.output(0, "items", (r, 0), 0)
    core.handle(Rescale("total", 1))
    assert core.handle(Rescale("total", 2)) == []
    assert [s.state for s in core.scale("total")] == ["ready", "ready"]
    assert [e.what for e in core.story() if e.replica == 11][-2:] == ["drain", "keep"]
    # It takes new groups again, and is never drained.
    r2 = next(x for x in range(r + 1, 200) if _rendezvous("total", (x,), 2) == 1)
    core.handle(Submit(r2, {"n": 1}))
    assert _to(core.output(0, "items", (r2, 0), 0)) == [11]
    out = core.ack(11, "total", (r, 0), "ok") + core.ack(11, "total", (r2, 0), "ok")
    assert not any(type(i) is Drained for i in out)


def test_work_parked_for_a_removed_slot_with_no_replica_goes_to_the_groups_new_slot():
    core = _up(SUM, "total", 2)
    r = next(r for r in range(100) if _rendezvous("total", (r,), 2) == 1)
    core.handle(Submit(r, {"n": 2}))
    core.output(0, "items", (r, 0), 0)
    core.ack(11, "total", (r, 0), "ok")
    core.handle(ReplicaDown(11))  # its group waits, parked, for slot 1's next replica
    core.output(0, "items", (r, 1), 1)
    assert ("total", 1) in core.parked
    # Slot 1 is removed before that replica comes: the group is rebuilt on slot 0.
    out = core.handle(Rescale("total", 1))
    assert not core.parked
    assert out == [Invoke(10, "total", (r, 0), {"items": 0}), Invoke(10, "total", (r, 1), {"items": 1})]
    core.ack(10, "total", (r, 0), "ok")
    core.ack(10, "total", (r, 1), "ok")
    assert core.ack(0, "items", (r,), "ok") == [Open(10, "total", (r,)), Flush(10, "total", (r,), True)]
    assert [e.what for e in core.story(r) if e.what == "rehome"] == ["rehome", "rehome"]


def test_a_draining_replica_that_dies_has_its_groups_replayed_on_a_live_slot():
    core = _up(SUM, "total", 2)
    r = next(r for r in range(100) if _rendezvous("total", (r,), 2) == 1)
    core.handle(Submit(r, {"n": 2}))
    core.output(0, "items", (r, 0), 0)
    core.ack(11, "total", (r, 0), "ok")
    core.handle(Rescale("total", 1))
    out = core.handle(ReplicaDown(11))
    assert out == [Invoke(10, "total", (r, 0), {"items": 0})]  # replayed on slot 0
    assert _to(core.output(0, "items", (r, 1), 1)) == [10]
    assert not core.parked and core.pins == {}


def test_a_rescale_names_a_stage_and_keeps_at_least_one_replica():
    core = _up(SUM, "total", 1)
    with pytest.raises(CoreError, match="at least 1"):
        core.handle(Rescale("total", 0))
    with pytest.raises(CoreError, match="unknown stage 'nope'; stages: items, total"):
        core.handle(Rescale("nope", 2))
    with pytest.raises(CoreError, match="has 1 replica slots, not 2"):
        core.handle(ReplicaUp(99, "total", 1))


# -- simulated: random interleavings, rescales and kills -----------------------------------

_SHUTDOWN = object()  # the router's SHUTDOWN to a drained replica


class RescaleSim(Sim):
    """``Sim`` with random ``Rescale`` events; a grown slot gets a new replica, a ``Drained``
    replica goes down cleanly (and is never restarted), and no replica ever gets a message
    for a group that another live replica holds."""

    def __init__(self, pipeline, seed: int, rescales: int, deaths: int = 0, **kw) -> None:
        self.rescales = rescales
        self.rescaled = 0
        self.retired: set[int] = set()
        self.holder: dict[tuple, int] = {}
        super().__init__(pipeline, seed, deaths=deaths, **kw)

    def apply(self, instructions) -> None:
        for ins in instructions:
            if type(ins) is Drained:
                assert ins.replica not in self.retired
                self.retired.add(ins.replica)
                self.to_replica[ins.replica].append(_SHUTDOWN)  # after what was sent before it
                continue
            rid = getattr(ins, "replica", None)
            if rid is not None and type(ins) in (Invoke, Open, Flush):
                assert rid not in self.retired, f"{ins} to a drained replica"
                sp = self.plan.stage(ins.stage)
                if sp.route_key is not None:
                    anc = ins.ancestry if type(ins) is Invoke else ins.prefix
                    key = (ins.stage, anc[: 1 + len(sp.route_key)])
                    held = self.holder.get(key)
                    assert held in (None, rid) or held in self.dead, f"group {key} split: {held}, {rid}"
                    self.holder[key] = rid
                    if type(ins) is Flush and not ins.opened:
                        del self.holder[key]
            super().apply([ins])

    def rescale(self) -> None:
        name = self.rng.choice(self.plan.names)
        n = self.rng.randint(1, 3)
        old = self.core.count[name]
        self.apply(self.core.handle(Rescale(name, n)))
        self.rescaled += 1
        for slot in range(old, n):
            if (name, slot) not in self.restarts:
                self.restarts.append((name, slot))

    def start(self, name: str, slot: int) -> None:
        if slot >= self.core.count[name]:
            return  # removed meanwhile
        occupant = self.core.slots[name].get(slot)
        if occupant is not None:
            if occupant in self.dead:
                self.restarts.append((name, slot))  # killed, its ReplicaDown not handled yet
            return  # a live replica has the slot
        super().start(name, slot)

    async def deliver_to_replica(self, rid: int) -> None:
        if self.to_replica[rid][0] is _SHUTDOWN:
            self.to_replica[rid].popleft()
            self.to_router[rid].append(ReplicaDown(rid))  # it exits: the router sees EOF
            return
        await super().deliver_to_replica(rid)

    async def run(self, requests: list[dict]) -> None:
        # Rescales happen while Sim.run delivers: hook them into the replica deliveries.
        deliver = self.deliver_to_replica

        async def deliver_and_rescale(rid: int) -> None:
            await deliver(rid)
            if self.rescaled < self.rescales and self.rng.random() < 0.05:
                self.rescale()

        self.deliver_to_replica = deliver_and_rescale  # type: ignore[method-assign]
        await super().run(requests)

    def kill(self, rid: int) -> None:
        if rid in self.retired:
            return
        super().kill(rid)


def _check_rescaled(case, xs, seed, rescales, deaths):
    defs = without_delays(case)
    sim = RescaleSim(build(defs), seed, rescales=rescales, deaths=deaths)
    run_and_compare(sim, defs, xs)
    core = sim.core
    assert core.pins == {}
    for name in core.stages:  # everything drained, every slot of the last count up
        assert [s.state for s in core.scale(name)] == ["ready"] * core.count[name]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pipelines(max_stages=6), xs=st.lists(st.integers(0, 40), min_size=1, max_size=3),
       seed=st.integers(0, 2**32), rescales=st.integers(1, 6), deaths=st.integers(0, 2))
def test_core_with_random_rescales_and_kills_gives_the_evaluators_results(case, xs, seed, rescales, deaths):
    _check_rescaled(case, xs, seed, rescales, deaths)


def test_rescaling_aggregates_while_their_replicas_die_gives_the_evaluators_results():
    """Not left to chance: keyed stages grow and shrink many times while replicas (draining
    ones too) are killed, and every request gets the evaluator's results."""
    drains = rehomes = keeps = 0
    for seed in range(30):
        sim = RescaleSim(_KILLED, seed, rescales=8, deaths=2, kill_rate=0.01)
        run_killed_requests(sim)
        assert sim.core.requests == {} and not sim.core.parked and sim.core.pins == {}
        story = sim.core.story()
        drains += sum(1 for e in story if e.what == "drained")
        rehomes += sum(1 for e in story if e.what == "rehome")
        keeps += sum(1 for e in story if e.what == "keep")
    assert drains >= 30 and keeps >= 1 and rehomes >= 5, (drains, rehomes, keeps)
