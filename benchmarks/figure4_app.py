"""The pipeline ``benchmarks/figure4.py`` serves: a fan-out whose size each request chooses, a
stage that stands for a fixed pool of model instances (``work``: 4 replicas, each serving one
item at a time for ``cost`` seconds, as an LM instance with a full batch would), and a sum per
request. The sum is the only aggregate, so altoflow keys only it; ``work`` is load-balanced
unless the server is started with ``--route-by-request``."""

import asyncio

from altoflow import ops, stage


@stage(fanout="item")
async def split(n: int):
    for i in range(n):
        yield i


@stage(replicas=4, concurrency=1)
async def work(split: int, cost: float = 0.02) -> float:
    await asyncio.sleep(cost)
    return cost


@stage(aggregate=ops.sum)
def total(work: float) -> float:
    return work
