"""A nested pipeline for the tracing tests: a fan-out, a sync map, a join and an aggregate.

``words`` returns the span id current while it runs (in a worker thread, or inline), so a test
can check that a stage's own code sees its stage span; ``boom`` fails on a claim that asks to.
"""

from opentelemetry import trace

from altoflow import ops, stage


@stage(fanout="claim")
async def claims(text: str):
    for part in text.split(". "):
        yield part


@stage(replicas=2, output=True)
def words(claims: str) -> list:
    return [len(claims.split()), trace.get_current_span().get_span_context().span_id]


@stage
def checked(claims: str, words: list) -> int:
    if "boom" in claims:
        raise ValueError(f"cannot check {claims!r}")
    return words[0]


@stage(aggregate=ops.sum, output=True)
def total(checked: int) -> int:
    return checked
