"""``RouterCore(pin_requests=True)``, the benchmark knob behind ``serve --route-by-request``:
every load-balanced stage's items go to the replica their request hashes to, as if each stage
were keyed by the request (benchmarks/figure4.py measures what that costs)."""

from __future__ import annotations

from altoflow import Pipeline, ops, stage
from altoflow.runtime.core import Invoke, ReplicaUp, RouterCore, Submit


@stage(fanout="item", output=False)
async def items(n: int):
    for i in range(n):
        yield i


@stage(replicas=3, concurrency=64, output=False)
async def work(items: int) -> int:
    return items


@stage(aggregate=ops.sum)
def total(work: int) -> int:
    return work


PLAN = Pipeline([items, work, total], name="pin").compiled.plan


def _replicas_of_work(pin: bool, requests: range) -> dict[int, set[int]]:
    core = RouterCore(PLAN, seed=1, pin_requests=pin)
    core.handle(ReplicaUp(0, "items", 0))
    for slot in range(3):
        core.handle(ReplicaUp(1 + slot, "work", slot))
    core.handle(ReplicaUp(4, "total", 0))
    used: dict[int, set[int]] = {}
    for r in requests:
        core.handle(Submit(r, {"n": 12}))
        for i in range(12):
            for ins in core.output(0, "items", (r, i), i):
                if isinstance(ins, Invoke) and ins.stage == "work":
                    used.setdefault(r, set()).add(ins.replica)
    return used


def test_pinned_requests_have_all_their_items_on_one_replica_and_requests_spread():
    used = _replicas_of_work(True, range(1, 9))
    assert all(len(replicas) == 1 for replicas in used.values())
    assert len(set().union(*used.values())) > 1  # different requests, different replicas


def test_without_the_knob_one_requests_items_spread_over_the_replicas():
    used = _replicas_of_work(False, range(1, 2))
    assert len(used[1]) > 1
