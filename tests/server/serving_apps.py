"""Pipelines for the serving tests, written the way a user would, plus a gate the tests hold.

``gated``: a fan-out whose generator yields one claim, then waits until the test opens
``GATE.release`` (polling, so that cancellation reaches it at an await), then yields another.
The stage records whether it was cancelled, so a test can see a disconnect reach it.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from fractions import Fraction

import anyio
import numpy as np
import pydantic

from altoflow import Pipeline, ops, stage


class Gate:
    def __init__(self) -> None:
        self.release = threading.Event()  # the test opens it
        self.reached = threading.Event()  # the generator waits behind it
        self.cancelled = threading.Event()  # the generator saw cancellation while waiting
        self.ended_by: str | None = None


GATE = Gate()


@stage(fanout="claim")
async def claims(topic: str):
    gate = GATE
    yield f"{topic} is first"
    gate.reached.set()
    try:
        while not gate.release.is_set():
            await anyio.sleep(0.005)
    except BaseException as exc:
        gate.ended_by = type(exc).__name__
        gate.cancelled.set()
        raise
    yield f"{topic} is second"


@stage
def checked(claims: str) -> str:
    return claims.upper()


gated = Pipeline([claims, checked], name="gated")


class Hit(pydantic.BaseModel):
    doc: str
    score: float


@dataclasses.dataclass
class Span:
    start: int
    end: int


class Colour(enum.Enum):
    RED = "red"


@stage
def value(kind: str):
    return {
        "numpy": np.arange(4).reshape(2, 2),
        "scalar": np.float32(0.5),
        "bytes": b"\xfb\xff\x00",
        "model": Hit(doc="d1", score=0.25),
        "tuple": ("a", 1, (2.5, None)),
        "dataclass": Span(1, 3),
        "enum": Colour.RED,
        "nested_object": {"fine": [1, 2], "bad": [3, object()]},
        "object": object(),
    }[kind]


values = Pipeline([value], name="values")


# ``metered``: words, upper-cased (failing on the word "bad"), counted; both ingresses must
# count the same things for it. ``ratios``: an output the codec has no format for, so that the
# served runtime sends it pickled when started with allow_pickle (unannotated: an annotation
# the codec cannot carry is a compile error).


@stage(fanout="word")
def split(text: str):
    yield from text.split()


@stage
def shouted(split: str) -> str:
    if split == "bad":
        raise ValueError(f"cannot shout {split!r}")
    return split.upper()


@stage(aggregate=ops.count)
def counted(shouted: str) -> str:
    return shouted


metered = Pipeline([split, shouted, counted], name="metered")

# ``stalls`` (LocalIngress only: its fan-out never ends): the word "bad" fails downstream while
# the fan-out that made it still runs, so the request's end cancels that invocation.


@stage(fanout="word")
async def stalling(text: str):
    for word in text.split():
        yield word
    await anyio.sleep_forever()


@stage
def refused(stalling: str) -> str:
    raise ValueError(f"cannot take {stalling!r}")


stalls = Pipeline([stalling, refused], name="stalls")


@stage
def third(n: int):
    return Fraction(n, 3)


ratios = Pipeline([third], name="ratios")
