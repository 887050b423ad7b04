"""A pipeline with slow stages, for fault tests of the served runtime."""

import asyncio
import os

from altoflow import ops, stage

MARKERS = os.environ.get("ALTOFLOW_TEST_MARKERS", "")


@stage(fanout="item")
async def items(n: int):
    for i in range(n):
        yield i


@stage(replicas=2, concurrency=4)
async def slow(items: int, delay: float = 0.05) -> int:
    try:
        await asyncio.sleep(delay)
    except asyncio.CancelledError:
        if MARKERS:  # tell the test that the cancellation reached the stage
            open(os.path.join(MARKERS, f"cancelled-{os.getpid()}-{items}"), "w").close()
        raise
    return items * 10


@stage(aggregate=ops.sum, replicas=2)
def total(slow: int) -> int:
    return slow
