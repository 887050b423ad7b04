"""Stages that fail in ways a replica cannot report as is, for fault tests of the served runtime.

``lookup`` raises with a lone surrogate in its message when the name is not in its table; the
aggregate ``report`` raises (with a surrogate) or returns a value the codec cannot send when a
word says so.
"""

from altoflow import ops, stage

TABLE = {"a": 1, "b": 2}


@stage(concurrency=1)
async def lookup(name: str) -> int:
    if name not in TABLE:
        raise LookupError(f"no entry {name}")
    return TABLE[name]


class _Report(ops.Aggregator):
    def create(self):
        return []

    def add(self, state, value, index):
        return state + [value]

    def merge(self, a, b):
        return a + b

    def result(self, state):
        if "raise" in state:
            raise ValueError("cannot report \ud800")
        if "object" in state:
            return object()
        return ",".join(sorted(state))


@stage(fanout="word")
async def words(text: str):
    for word in text.split():
        yield word


@stage(aggregate=_Report())
def report(words: str) -> str:
    return words

