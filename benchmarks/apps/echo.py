"""Pipelines for benchmarks/router.py: the cheapest stages there are, so that only the runtime costs.

- ``one``: a single async identity stage (``echo``): one request is one router hop out to a
  replica and back (DATA out; DATA and ACK in).
- ``two``: a fan-out source (``gen``) yielding ``n`` copies of a payload, and an async identity
  stage (``relay``) on each: every item goes replica -> router -> replica -> router.
- ``held``: an async identity stage (``hold``) that waits behind a gate, so that requests stay
  in flight (the memory measurement); a request with ``x < 0`` opens the gate for good.

Concurrency is high so that the router's credits never hold items back: its queueing is not
what these benchmarks measure.
"""

from __future__ import annotations

import asyncio

from altoflow import Pipeline, stage


@stage(concurrency=4096)
async def echo(x: bytes) -> bytes:
    return x


@stage(fanout="i", concurrency=64, output=False)
async def gen(x: bytes, n: int):
    for _ in range(n):
        yield x


@stage(concurrency=4096)
async def relay(gen: bytes) -> bytes:
    return gen


_GATE: asyncio.Event | None = None


@stage(concurrency=65536)
async def hold(x: int) -> int:
    global _GATE
    if _GATE is None:
        _GATE = asyncio.Event()
    if x < 0:
        _GATE.set()
    else:
        await _GATE.wait()
    return x


one = Pipeline([echo], name="bench-one")
two = Pipeline([gen, relay], name="bench-two")
held = Pipeline([hold], name="bench-held")
