"""A fan-out that yields its items slowly, a map on each item and a sum: the shape of the ALTO
paper's Figure 2 (an LM writing claims one by one, each verified as it appears)."""

import asyncio

from altoflow import ops, stage


@stage(fanout="claim")
async def claims(n: int, pause: float = 0.05):
    for i in range(n):
        await asyncio.sleep(pause)
        yield i


@stage(replicas=2, concurrency=4)
async def verify(claims: int) -> int:
    await asyncio.sleep(0.01)
    return claims * 10


@stage(aggregate=ops.sum)
def total(verify: int) -> int:
    return verify
