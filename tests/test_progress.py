"""The pure progress tracker, driven directly: no executor, no asyncio."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from altoflow import ops, stage
from altoflow.compiler import Pipeline
from altoflow.runtime.progress import Progress, RequestIdle, Topology, Unreachable


@stage(fanout="claim")
def claims(text):
    yield text


@stage(fanout="query")
def queries(claims):
    yield claims


@stage(aggregate=ops.sum)
def score(queries):
    return 1


@stage(aggregate=ops.collect, over="claim")
def report(claims, score):
    return score


PLAN = Pipeline([claims, queries, score, report]).compiled.plan


def test_topology():
    topo = Topology.from_plan(PLAN)
    assert topo.names == ("claims", "queries", "score", "score.fold", "report", "report.fold")
    # aggregate inputs are watched with their key depth; join inputs with their stack depth
    assert topo.targets == {
        topo.in_loc["score"]: 1,
        topo.in_loc["report"]: 0,
        topo.in_loc["claims"]: 1,
        topo.fold_loc["score"]: 1,
    }


def test_group_closes_only_after_its_last_item():
    topo = Topology.from_plan(PLAN)
    p = Progress(topo)
    q, s = topo.in_loc["queries"], topo.in_loc["score"]
    p.hold(q, (7, 0))  # queries running on claim 0
    p.hold(q, (7, 1))  # and on claim 1
    assert not p.watch(s, (7, 0))
    assert not p.watch(s, (7, 1))
    p.hold(s, (7, 0, 0))  # an item of claim 0's group reaches score
    assert p.release(q, (7, 0)) == []  # still one item in flight for claim 0
    assert p.release(s, (7, 0, 0)) == [Unreachable(s, (7, 0))]
    assert p.release(q, (7, 1)) == [Unreachable(s, (7, 1)), RequestIdle(7)]


def test_upstream_work_at_a_shallower_depth_blocks_every_group():
    topo = Topology.from_plan(PLAN)
    p = Progress(topo)
    c, s = topo.in_loc["claims"], topo.in_loc["score"]
    p.hold(c, (1,))  # claims still running: any claim's group may still get items
    assert not p.watch(s, (1, 5))
    assert p.reachable(s, (1, 5))
    assert p.release(c, (1,)) == [Unreachable(s, (1, 5)), RequestIdle(1)]


def test_requests_are_independent():
    topo = Topology.from_plan(PLAN)
    p = Progress(topo)
    s = topo.in_loc["score"]
    p.hold(s, (1, 0, 0))
    p.hold(s, (2, 0, 0))
    assert p.watch(s, (3, 0))  # a request with nothing in flight
    assert not p.watch(s, (1, 0))
    assert p.release(s, (2, 0, 0)) == [RequestIdle(2)]
    p.forget(1)
    assert p.holds(1) == 0 and not p.reachable(s, (1, 0))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 30))
def test_random_release_orders(seed, n):
    """Whatever the order of releases, each watch fires exactly once, after its last hold."""
    rng = random.Random(seed)
    topo = Topology.from_plan(PLAN)
    p = Progress(topo)
    s = topo.in_loc["score"]
    held = [(s, (0, rng.randrange(3), rng.randrange(3))) for _ in range(n)]
    for loc, anc in held:
        p.hold(loc, anc)
    groups = {(0, c) for c in range(3)}
    fired = [g for g in sorted(groups) if p.watch(s, g)]  # True: nothing can reach it now
    assert all(not any(a[:2] == g for _, a in held) for g in fired)
    rng.shuffle(held)
    for i, (loc, anc) in enumerate(held):
        for ev in p.release(loc, anc):
            if isinstance(ev, Unreachable):
                fired.append(ev.prefix)
                left = [a for _, a in held[i + 1:] if a[:2] == ev.prefix]
                assert not left  # never before the group's last item
    assert sorted(fired) == sorted(groups)  # every group, exactly once
