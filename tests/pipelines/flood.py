"""Pipelines that make more than their clients read or their aggregates take: flow-control tests.

``reader``: a fan-out of ``n`` strings of ``size`` characters, each streamed to the client and
summed up by an aggregate (an answer far larger than a client that reads nothing would take).
``fanin``: a fan-out of ``n`` ints into one aggregate replica, faster than it folds them.
``listing``: ``reader``'s fan-out as a sync generator, which runs one invocation at a time.
"""

from altoflow import Pipeline, ops, stage


@stage(fanout="chunk", output=True)
async def chunks(n: int, size: int = 4096):
    for i in range(n):
        yield f"{i:08d}" + "x" * (size - 8)


@stage(aggregate=ops.sum)
async def length(chunks: str) -> int:
    return len(chunks)


@stage(fanout="item")
async def items(n: int):
    for i in range(n):
        yield i


@stage(aggregate=ops.sum)
async def total(items: int) -> int:
    return items


reader = Pipeline([chunks, length], name="reader")
fanin = Pipeline([items, total], name="fanin")


@stage(fanout="line", output=True)
def lines(n: int, size: int = 4096):  # sync: one invocation at a time on its replica
    for i in range(n):
        yield f"{i:08d}" + "y" * (size - 8)


listing = Pipeline([lines], name="listing")
