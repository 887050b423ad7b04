"""Stages that stream partial outputs with ``altoflow.partial``, one of each kind of function.

``answer`` (async) streams each word of the question, ``claims`` (a sync generator, so its
deltas come from worker threads) streams a marker per claim, ``shout`` (a sync map) streams
its value one letter at a time, and ``joined`` (an async aggregate) none. ``flood`` streams
``flood`` deltas of 100 characters, for the tests of a client that reads nothing.
``expected(question)`` is the plain-Python oracle of the outputs.
"""

from __future__ import annotations

import anyio

import altoflow as af
from altoflow import ops, stage


@stage(output=True)
async def answer(question: str) -> str:
    text = ""
    for word in question.split():
        piece = word + " "
        af.partial(piece)
        text += piece
        await anyio.sleep(0)  # the deltas leave while the answer is still being written
    return text


@stage(fanout="claim")
def claims(answer: str):
    for word in answer.split():
        af.partial(f"[{word}]")
        yield word


@stage(output=True)
def shout(claims: str) -> str:
    out = ""
    for letter in claims:
        af.partial(letter.upper())
        out += letter.upper()
    return out


@stage(aggregate=ops.concat(sep=" "), over="claim", output=True)
async def joined(shout: str) -> str:
    return shout


@stage(output=True)
async def flooded(flood: int = 0) -> str:
    pieces = []
    for i in range(flood):
        piece = f"{i:>6}" + "x" * 93 + "\n"  # 100 characters
        af.partial(piece)
        pieces.append(piece)
        if i % 50 == 0:
            await anyio.sleep(0)
    return "".join(pieces)


pipeline = af.Pipeline([answer, claims, shout, joined, flooded], name="partials")


def expected(question: str, flood: int = 0) -> dict:
    words = question.split()
    text = "".join(w + " " for w in words)
    return {
        "answer": text,
        "shout": [w.upper() for w in words],
        "joined": " ".join(w.upper() for w in words),
        "flooded": "".join(f"{i:>6}" + "x" * 93 + "\n" for i in range(flood)),
    }
