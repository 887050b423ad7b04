"""Invalid: a join of two different fan-out branches of one claim."""

from altoflow import stage


@stage(fanout="claim")
def claims(text: str):
    yield from text.split(".")


@stage(fanout="query")
def queries(claims: str):
    yield claims


@stage(fanout="keyword")
def keywords(claims: str):
    yield from claims.split()


@stage
def matched(queries: str, keywords: str) -> bool:
    return keywords in queries
