"""The router core under random interleavings, with simulated replicas and no sockets.

Every socket is FIFO, and nothing else is ordered: the simulator keeps one queue per direction
per replica and, at each step, delivers the head of a randomly chosen non-empty queue. Replicas
run the real ``StageRunner``. Checked: results equal the naive evaluator's; every group is
flushed at most once per replica and never before its last item; when all requests have ended,
nothing of them is left anywhere. With ``deaths``, aggregate replicas are killed at random
moments (what was sent to them and not yet handled is lost; what they sent arrives, then their
``ReplicaDown``) and come back as new replicas on the same slot: the core replays their groups,
and the results must still be the evaluator's. With ``pauses``, requests are paused and resumed
at random moments (as the router does when a client falls behind), and fan-outs are paced by a
small window (the simulated replicas run ahead of their credit, which the core allows).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque

from hypothesis import HealthCheck, given, settings

import altoflow as af
from hypothesis import strategies as st

from altoflow.runtime.core import (
    Abort, Ack, Emit, Finish, Flush, FlushDone, Grant, Invoke, Open, Output, Pause, ReplicaDown,
    ReplicaUp, Resume, RouterCore, Submit,
)
from altoflow.runtime.runner import StageRunner
from oracle import evaluate
from randompipes import build, pipelines


class Sim:
    def __init__(self, pipeline, seed: int, deaths: int = 0, kill_rate: float = 0.03,
                 pauses: bool = False) -> None:
        self.compiled = pipeline.compiled
        self.plan = self.compiled.plan
        self.core = RouterCore(self.plan, seed=seed, story_length=100_000,
                               fanout_window=2 if pauses else None)
        self.pauses = pauses
        self.paused: set[int] = set()
        self.rng = random.Random(seed)
        self.to_replica: dict[int, deque] = {}
        self.to_router: dict[int, deque] = {}
        self.runners: dict[int, StageRunner] = {}
        self.outputs: dict[int, dict] = {}
        self.finished: dict[int, object] = {}
        self.flushed: Counter = Counter()
        self.closed_groups: set = set()
        self.deaths = deaths  # aggregate replicas to kill, each at a step with kill_rate
        self.kill_rate = kill_rate
        self.killed = 0
        self.dead: set[int] = set()
        self.restarts: list[tuple[str, int]] = []  # (stage, slot) whose replica is down
        self.slot_of: dict[int, tuple[str, int]] = {}
        self._rid = 0
        for sp in self.plan.stages:
            for slot in range(sp.replicas):
                self.start(sp.name, slot)

    def start(self, name: str, slot: int) -> None:
        rid, self._rid = self._rid, self._rid + 1
        sp = self.plan.stage(name)
        spec = self.compiled.specs[name]
        q = self.to_router[rid] = deque()
        self.to_replica[rid] = deque()
        self.slot_of[rid] = (name, slot)
        self.runners[rid] = StageRunner(
            spec, sp, spec.obj,
            lambda anc, v, rid=rid, name=name, q=q: q.append(Output(rid, name, anc, v)))
        self.apply(self.core.handle(ReplicaUp(rid, name, slot)))

    def kill(self, rid: int) -> None:
        """kill -9: what it was sent is lost; what it sent arrives, then the router sees EOF."""
        self.dead.add(rid)
        self.killed += 1
        self.to_replica[rid].clear()
        self.to_router[rid].append(ReplicaDown(rid))

    def apply(self, instructions) -> None:
        for ins in instructions:
            if isinstance(ins, Emit):
                anc = tuple(ins.ancestry.values())
                outs = self.outputs.setdefault(ins.request, {}).setdefault(ins.stage, {})
                assert anc not in outs, f"{ins.stage} {anc} emitted twice"
                outs[anc] = ins.payload
            elif isinstance(ins, Finish):
                assert ins.request not in self.finished
                self.finished[ins.request] = ins.error
                self.paused.discard(ins.request)
            elif isinstance(ins, Grant):
                assert not self.pauses or ins.ancestry[0] not in self.paused, "credit while paused"
            else:
                if isinstance(ins, Flush) and ins.opened:
                    self.flushed[(ins.replica, ins.stage, ins.prefix)] += 1
                if ins.replica not in self.dead:
                    self.to_replica[ins.replica].append(ins)

    async def deliver_to_replica(self, rid: int) -> None:
        ins = self.to_replica[rid].popleft()
        runner, q = self.runners[rid], self.to_router[rid]
        if isinstance(ins, Invoke):
            if runner.plan.route_key is not None:
                group = (rid, ins.stage, ins.ancestry[: 1 + len(runner.plan.route_key)])
                assert group not in self.closed_groups, f"item {ins.ancestry} after flush of {group}"
            status, error = await runner.invoke(ins.ancestry, ins.args)
            q.append(Ack(rid, ins.stage, ins.ancestry, status, error))
        elif isinstance(ins, Open):
            status, error = runner.open(ins.prefix)
            if status == "failed":
                q.append(FlushDone(rid, ins.stage, ins.prefix, status, error))
        elif isinstance(ins, Flush):
            self.closed_groups.add((rid, ins.stage, ins.prefix))
            status, error = runner.flush(ins.prefix, ins.opened)
            q.append(FlushDone(rid, ins.stage, ins.prefix, status, error))
        elif isinstance(ins, Abort):
            runner.abort(ins.request)

    async def run(self, requests: list[dict]) -> None:
        for i, fields in enumerate(requests):
            self.apply(self.core.handle(Submit(i, self.compiled.validate_request(fields))))
        steps = 0
        while True:
            ready = [("r", k) for k, q in self.to_replica.items() if q and k not in self.dead] + \
                    [("c", k) for k, q in self.to_router.items() if q] + \
                    [("up", i) for i in range(len(self.restarts))]
            if self.pauses and self.rng.random() < 0.05:
                running = sorted(set(range(len(requests))) - set(self.finished))
                if running:
                    request = self.rng.choice(running)
                    if request in self.paused:
                        self.paused.discard(request)
                        self.apply(self.core.handle(Resume(request)))
                    else:
                        self.paused.add(request)
                        self.apply(self.core.handle(Pause(request)))
                    continue
            if not ready and self.paused:
                for request in sorted(self.paused):  # what waits for them is all that is left
                    self.paused.discard(request)
                    self.apply(self.core.handle(Resume(request)))
                continue
            if not ready:
                break
            if self.killed < self.deaths and self.rng.random() < self.kill_rate:
                keyed = [rid for rid, r in self.runners.items()
                         if rid not in self.dead and r.plan.route_key is not None]
                if keyed:
                    self.kill(self.rng.choice(keyed))
                    continue
            where, rid = self.rng.choice(ready)
            if where == "r":
                await self.deliver_to_replica(rid)
            elif where == "up":
                self.start(*self.restarts.pop(rid))
            else:
                ev = self.to_router[rid].popleft()
                self.apply(self.core.handle(ev))
                if isinstance(ev, ReplicaDown):
                    self.restarts.append(self.slot_of[ev.replica])
            steps += 1
            assert steps < 200_000


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pipelines(max_stages=6), xs=st.lists(st.integers(0, 40), min_size=1, max_size=3),
       seed=st.integers(0, 2**32))
def test_core_under_random_interleavings(case, xs, seed):
    _check(case, xs, seed, deaths=0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pipelines(max_stages=6), xs=st.lists(st.integers(0, 40), min_size=1, max_size=3),
       seed=st.integers(0, 2**32), deaths=st.integers(1, 3))
def test_core_replays_the_groups_of_killed_aggregate_replicas(case, xs, seed, deaths):
    _check(case, xs, seed, deaths=deaths)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pipelines(max_stages=6), xs=st.lists(st.integers(0, 40), min_size=1, max_size=3),
       seed=st.integers(0, 2**32), deaths=st.integers(0, 2))
def test_core_with_requests_paused_at_random_and_replicas_killed(case, xs, seed, deaths):
    _check(case, xs, seed, deaths=deaths, pauses=True)


def test_paused_requests_survive_killed_aggregate_replicas_with_the_evaluators_results():
    """Pause x replay x kill, not left to chance: requests paused and resumed while their
    groups' replicas die and are rebuilt."""
    kills = replays = pauses = 0
    for seed in range(20):
        sim = Sim(_KILLED, seed, deaths=3, kill_rate=(0.03, 0.01, 0.003)[seed % 3], pauses=True)
        run_killed_requests(sim)
        assert sim.core.requests == {} and not sim.core.parked and sim.core.replay_buffered == 0
        assert sim.core.paused == set() and sum(sim.core.statistics().queued.values()) == 0
        story = sim.core.story()
        kills += sim.killed
        replays += sum(1 for e in story if e.what == "replay" and e.detail != "0")
        pauses += sum(1 for e in story if e.what == "pause")
    assert kills >= 20 and replays >= 20 and pauses >= 20, (kills, replays, pauses)


@af.stage(fanout="item", output=False)
async def _items(n: int):
    for i in range(n):
        yield i


@af.stage(fanout="part", output=False)
async def _parts(_items: int):
    for j in range(_items % 3):
        yield _items * 10 + j


@af.stage(aggregate=af.ops.sum, replicas=2, concurrency=4)
async def _total(_items: int) -> int:
    return _items


@af.stage(aggregate=af.ops.first(lambda v: v % 7 == 3), replicas=2)
async def _found(_items: int) -> int:
    return _items


@af.stage(aggregate=af.ops.any, concurrency=3)
async def _odd(_items: int) -> bool:
    return _items % 2 == 1


@af.stage(aggregate=af.ops.collect, replicas=2)
async def _per_item(_parts: int) -> int:  # a group per item: keyed by the item's index
    return _parts


_KILLED = af.Pipeline([_items, _parts, _total, _found, _odd, _per_item], name="killed")


def run_killed_requests(sim: Sim) -> None:
    """Three requests on ``_KILLED`` (20, 7 and 0 items) through ``sim``: each gets the
    evaluator's results."""
    ns = [20, 7, 0]
    asyncio.run(sim.run([{"n": n} for n in ns]))
    for i, n in enumerate(ns):
        expected = asyncio.run(evaluate(_KILLED, n=n))
        assert sim.finished[i] is None, sim.finished[i]
        assert sim.outputs.get(i, {}) == {k: v for k, v in expected.outputs.items() if v}


def test_killed_aggregate_replicas_replay_to_the_evaluators_results():
    """Not left to chance: on a pipeline of aggregates, replicas die and their groups replay,
    early-decided ones included, and every request still gets the evaluator's results."""
    kills = replays = repeats = 0
    for seed in range(30):
        # Early kills hit groups still filling, late ones groups that have decided or flushed.
        sim = Sim(_KILLED, seed, deaths=3, kill_rate=(0.03, 0.01, 0.003)[seed % 3])
        run_killed_requests(sim)
        assert sim.core.requests == {} and not sim.core.parked and sim.core.replay_buffered == 0
        story = sim.core.story()
        kills += sim.killed
        replays += sum(1 for e in story if e.what == "replay" and e.detail != "0")
        repeats += sum(1 for e in story if e.what == "repeat")
    assert kills >= 30 and replays >= 30 and repeats >= 1, (kills, replays, repeats)


def without_delays(case) -> list:
    defs, _ = case
    return [d.__class__(**{**d.__dict__, "delay": 0.0}) for d in defs]


def run_and_compare(sim: Sim, defs: list, xs: list[int]) -> None:
    """Run ``sim`` on a request per x; every request ends with the evaluator's results (or one
    of its errors), and the core keeps nothing of them."""
    asyncio.run(sim.run([{"x": x} for x in xs]))
    assert set(sim.finished) == set(range(len(xs))), "every request ends"
    for i, x in enumerate(xs):
        expected = asyncio.run(evaluate(build(defs), x=x))
        error = sim.finished[i]
        if expected.errors:
            assert error is not None and (error.stage, tuple(error.ancestry.items())) in expected.errors
        else:
            assert error is None, error
            assert sim.outputs.get(i, {}) == {k: v for k, v in expected.outputs.items() if v}
    core = sim.core
    assert core.requests == {} and not core.parked and core.replay_buffered == 0
    assert all(not r.inflight and not r.queue and not r.groups for r in core.replicas.values())


def _check(case, xs, seed, deaths, pauses=False):
    defs = without_delays(case)
    sim = Sim(build(defs), seed, deaths=deaths, pauses=pauses)
    run_and_compare(sim, defs, xs)
    assert all(n == 1 for n in sim.flushed.values()), "a group flushed twice on one replica"
    # Nothing of any request is left behind.
    core = sim.core
    assert list(core.progress.requests()) == []
    assert all(not q for q in core.stage_queue.values())
    assert all(not r.groups for rid, r in sim.runners.items() if rid not in sim.dead)
    assert core.paused == set() and core._tally[0] == 0
    return sim
