"""The pipeline ``benchmarks/placement.py`` measures: light sync stages, as a tokenizer, a
per-token lookup and a fold are, so that what is timed is the runtime's cost per item."""

from altoflow import ops, stage


@stage(fanout="token")
def tokens(n: int):
    for i in range(n):
        yield f"t{i}"


@stage
def length(tokens: str) -> int:
    return len(tokens)


@stage(aggregate=ops.sum, over="token")
def total(length: int) -> int:
    return length


@stage(output=True)
def report(total: int) -> dict:
    return {"total": total}
