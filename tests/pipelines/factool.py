"""A FacTool-style claim-verification pipeline, with plain-Python parts."""

from altoflow import ops, stage


@stage
async def answer(question: str) -> str:
    return f"{question} is a fact. it has two claims"


@stage(fanout="claim")
async def claims(answer: str):
    for line in answer.split(". "):
        yield line


@stage(fanout="query", replicas=3)
async def queries(claims: str):
    yield claims
    yield claims.upper()


@stage(fanout="token")
def query_tokens(queries: str):
    yield from queries.split()


@stage(aggregate=ops.sum, replicas=4)
def bm25(query_tokens: str) -> float:
    return float(len(query_tokens))


@stage(aggregate=ops.topk(3), over="claim")
def evidence(claims: str, bm25: float) -> float:
    return bm25 + len(claims) / 100
