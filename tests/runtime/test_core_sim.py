"""The router core under random interleavings, with simulated replicas and no sockets.

Every socket is FIFO, and nothing else is ordered: the simulator keeps one queue per direction
per replica and, at each step, delivers the head of a randomly chosen non-empty queue. Replicas
run the real ``StageRunner``. Checked: results equal the naive evaluator's; every group is
flushed at most once and never before its last item; when all requests have ended, nothing of
them is left anywhere.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from altoflow.runtime.core import (
    Abort, Ack, Emit, Finish, Flush, FlushDone, Invoke, Open, Output, ReplicaUp, RouterCore, Submit,
)
from altoflow.runtime.runner import StageRunner
from oracle import evaluate
from randompipes import build, pipelines


class Sim:
    def __init__(self, pipeline, seed: int) -> None:
        self.compiled = pipeline.compiled
        self.plan = self.compiled.plan
        self.core = RouterCore(self.plan, seed=seed)
        self.rng = random.Random(seed)
        self.to_replica: dict[int, deque] = {}
        self.to_router: dict[int, deque] = {}
        self.runners: dict[int, StageRunner] = {}
        self.outputs: dict[int, dict] = {}
        self.finished: dict[int, object] = {}
        self.flushed: Counter = Counter()
        self.closed_groups: set = set()
        rid = 0
        for sp in self.plan.stages:
            spec = self.compiled.specs[sp.name]
            for slot in range(sp.replicas):
                q = self.to_router[rid] = deque()
                self.to_replica[rid] = deque()
                self.runners[rid] = StageRunner(
                    spec, sp, spec.obj,
                    lambda anc, v, rid=rid, name=sp.name, q=q: q.append(Output(rid, name, anc, v)))
                self.apply(self.core.handle(ReplicaUp(rid, sp.name, slot)))
                rid += 1

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
            else:
                if isinstance(ins, Flush) and ins.opened:
                    self.flushed[(ins.stage, ins.prefix)] += 1
                self.to_replica[ins.replica].append(ins)

    async def deliver_to_replica(self, rid: int) -> None:
        ins = self.to_replica[rid].popleft()
        runner, q = self.runners[rid], self.to_router[rid]
        if isinstance(ins, Invoke):
            if runner.plan.route_key is not None:
                group = (ins.stage, ins.ancestry[: 1 + len(runner.plan.route_key)])
                assert group not in self.closed_groups, f"item {ins.ancestry} after flush of {group}"
            status, error = await runner.invoke(ins.ancestry, ins.args)
            q.append(Ack(rid, ins.stage, ins.ancestry, status, error))
        elif isinstance(ins, Open):
            status, error = runner.open(ins.prefix)
            if status == "failed":
                q.append(FlushDone(rid, ins.stage, ins.prefix, status, error))
        elif isinstance(ins, Flush):
            self.closed_groups.add((ins.stage, ins.prefix))
            status, error = runner.flush(ins.prefix, ins.opened)
            q.append(FlushDone(rid, ins.stage, ins.prefix, status, error))
        elif isinstance(ins, Abort):
            runner.abort(ins.request)

    async def run(self, requests: list[dict]) -> None:
        for i, fields in enumerate(requests):
            self.apply(self.core.handle(Submit(i, self.compiled.validate_request(fields))))
        steps = 0
        while True:
            ready = [("r", k) for k, q in self.to_replica.items() if q] + \
                    [("c", k) for k, q in self.to_router.items() if q]
            if not ready:
                break
            where, rid = self.rng.choice(ready)
            if where == "r":
                await self.deliver_to_replica(rid)
            else:
                self.apply(self.core.handle(self.to_router[rid].popleft()))
            steps += 1
            assert steps < 200_000


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pipelines(max_stages=6), xs=st.lists(st.integers(0, 40), min_size=1, max_size=3),
       seed=st.integers(0, 2**32))
def test_core_under_random_interleavings(case, xs, seed):
    defs, _ = case
    defs = [d.__class__(**{**d.__dict__, "delay": 0.0}) for d in defs]
    sim = Sim(build(defs), seed)
    asyncio.run(sim.run([{"x": x} for x in xs]))

    assert set(sim.finished) == set(range(len(xs))), "every request ends"
    for i, x in enumerate(xs):
        expected = asyncio.run(evaluate(build(defs), x=x))
        error = sim.finished[i]
        if expected.errors:
            assert error is not None and (error.stage, tuple(error.ancestry.items())) in expected.errors
        else:
            assert error is None, error
            got = {k: v for k, v in sim.outputs.get(i, {}).items()}
            assert got == {k: v for k, v in expected.outputs.items() if v}
    assert all(n == 1 for n in sim.flushed.values()), "a group flushed twice"
    # Nothing of any request is left behind.
    core = sim.core
    assert core.requests == {}
    assert list(core.progress.requests()) == []
    assert all(not r.inflight and not r.queue and not r.groups for r in core.replicas.values())
    assert all(not q for q in core.stage_queue.values()) and not core.parked
    assert all(not r.groups for r in sim.runners.values())
