"""A 12-stage document-drafting pipeline, for the CLI's pictures: three fan-outs, five
aggregates (one over an outer level), a zip join, a broadcast and request fields."""

from __future__ import annotations

from altoflow import Pipeline, ops, stage


@stage(fanout="section")
def outline(question: str, sections: int = 2):
    for i in range(sections):
        yield f"{question} part {i}"


@stage(fanout="subquestion")
def subquestions(outline: str):
    yield f"what is {outline}"
    yield f"why {outline}"


@stage(fanout="keyword", replicas=2)
def keywords(subquestions: str):
    yield from subquestions.split()


@stage(aggregate=ops.sum, replicas=3)
def hits(keywords: str) -> int:
    return len(keywords)


@stage
def context(hits: int, subquestions: str, outline: str) -> str:
    # hits and subquestions are zipped by ancestry; outline is broadcast to each subquestion
    return f"{outline}: {subquestions} ({hits})"


@stage(aggregate=ops.topk(1, key=len), over="subquestion")
def passages(context: str) -> str:
    return context


@stage
def draft(passages: list, outline: str) -> str:
    return f"{outline} -> {'; '.join(passages)}"


@stage(fanout="check")
def checks(draft: str):
    yield draft
    yield draft.upper()


@stage(aggregate=ops.all(lambda ok: ok))
def verdict(checks: str) -> bool:
    return len(checks) > 0


@stage(aggregate=ops.count(pred=bool), over="section")
def passed(verdict: bool) -> bool:
    return verdict


@stage(aggregate=ops.concat(sep="\n"), over="section")
def document(draft: str) -> str:
    return draft


@stage(output=True)
def report(document: str, passed: int, question: str) -> dict:
    return {"question": question, "passed": passed, "document": document}


pipeline = Pipeline(
    [outline, subquestions, keywords, hits, context, passages, draft, checks, verdict, passed,
     document, report],
    name="twelve",
)
