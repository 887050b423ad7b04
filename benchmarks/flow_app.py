"""The pipelines of ``benchmarks/flow.py``: a huge fan-out into one aggregate replica, and an
answer far larger than a client that reads nothing takes."""

import asyncio

from altoflow import Pipeline, ops, stage


@stage(fanout="item")
async def items(n: int):
    for i in range(n):
        if i % 256 == 0:
            await asyncio.sleep(0)  # let the replica's loop breathe (its heartbeats), paced or not
        yield i


@stage(aggregate=ops.sum)
async def total(items: int) -> int:
    return items


@stage(fanout="chunk", output=True)
async def chunks(n: int, size: int = 4096):
    for i in range(n):
        yield f"{i:08d}" + "x" * (size - 8)


fanin = Pipeline([items, total], name="fanin")
reader = Pipeline([chunks], name="reader")
