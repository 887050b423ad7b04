"""The pipeline benchmarks/faults.py serves and attacks: one stage of every replica kind.

- ``items``: a fan-out (two replicas) yielding ``n`` numbers, pausing ``pause`` s between them.
- ``guarded``: a stateless map, one input at a time per replica (as docs/runtime.md advises for
  a stage that may crash), whose replica exits on the spot (``os._exit``) when the item equals
  the request's ``poison``: a poison input.
- ``scored``: a stateless map (two local replicas, four invocations each), an output stage, so
  that a request's stream has one event per item (what a slow reader leaves unread).
- ``checked``: a stateless map served by ``altoflow worker --connect`` over TCP (``--remote``).
- ``total``: an aggregate (``ops.sum``) over the items, two replicas holding groups.
"""

from __future__ import annotations

import asyncio
import os

from altoflow import ops, stage


@stage(fanout="item", replicas=2, concurrency=8, output=False)
async def items(n: int, pause: float = 0.0):
    for i in range(n):
        if pause:
            await asyncio.sleep(pause)
        yield i


@stage(replicas=2, concurrency=1, output=False)
async def guarded(items: int, poison: int = -1) -> int:
    if items == poison:
        os._exit(1)
    return items * 3 + 1


@stage(replicas=2, concurrency=4, output=True)
async def scored(guarded: int, delay: float = 0.0) -> int:
    if delay:
        await asyncio.sleep(delay)
    return guarded % 1009


@stage(replicas=2, concurrency=4, output=False)
async def checked(scored: int) -> int:
    return scored * 7 % 101


@stage(aggregate=ops.sum, replicas=2)
def total(checked: int) -> int:
    return checked
