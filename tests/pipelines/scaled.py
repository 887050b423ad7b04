"""A pipeline to rescale while it serves: a load-balanced stage (``work``), an aggregate keyed
by the request (``squares``) and one keyed by each item (``per_item``: many groups per
request), each slow enough that rescales find work in flight and groups open."""

import asyncio

from altoflow import ops, stage


@stage(fanout="item", output=False)
async def items(n: int):
    for i in range(n):
        await asyncio.sleep(0.001)
        yield i


@stage(concurrency=4, output=False)
async def work(items: int) -> int:
    await asyncio.sleep(0.003)
    return items * items


@stage(aggregate=ops.collect, concurrency=4)
async def squares(work: int) -> int:
    await asyncio.sleep(0.001)
    return work


@stage(fanout="part", output=False)
def parts(items: int):
    for j in range(3):
        yield items * 10 + j


@stage(aggregate=ops.sum, concurrency=4)
async def per_item(parts: int) -> int:
    await asyncio.sleep(0.001)
    return parts
