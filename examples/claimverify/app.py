"""Claim verification: answer a question, then check every claim of the answer against evidence.

The ALTO paper's FacTool pipeline, end to end:

1. ``answer``: an LM answers the question (streamed to the client as one value);
2. ``claims``: a second LM call lists the answer's claims, one per line, and each claim goes on
   (fan-out ``claim``) the moment its line is written, while the LM is still writing the next;
3. ``queries``: per claim, an LM writes search queries, one per line (fan-out ``query``);
4. ``query_tokens``: each query is split into its BM25 tokens (fan-out ``token``);
5. ``bm25``: each token is scored against the corpus on its own and ``ops.sum`` adds the scores
   of one query's tokens; altoflow keys this aggregate by (request, claim, query), so one
   replica sees all of a query's tokens;
6. ``candidates``: the query's best BM25 passages, reranked by ColBERT when the ``colbert``
   extra is installed, in BM25 order otherwise (fan-out ``candidate``);
7. ``evidence``: ``ops.topk`` keeps the best passages over all queries of a claim;
8. ``verdict``: an LM judges the claim against its evidence (supported, refuted, or not enough
   evidence) and cites the passages it relies on;
9. ``report``: one record per claim, streamed to the client as soon as its verdict is in.

The corpus is ``pydoc_data.topics``, the help topics that ship with Python, cut into passages:
no download, no network (``ALTOFLOW_CORPUS=foldoc`` uses Debian's FOLDOC dictionary instead).
The LM comes from the ``ALTOFLOW_LM*`` variables: the simulated engine unless they say
otherwise, and every report says which engine wrote it. ``ALTOFLOW_RERANKER`` picks the
reranker: ``auto`` (the default: ColBERT when importable), ``colbert`` or ``bm25``.

    altoflow compile examples/claimverify/app.py --show-graph
    altoflow run examples/claimverify/app.py --input "$(cat examples/claimverify/input.json)"
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import AsyncIterator, Iterator

import numpy as np

from altoflow import ops, stage
from altoflow.lm import LM, loop_lm
from altoflow.retrieval import BM25Index, ColBERTReranker, MissingExtraError

ANSWER_PROMPT = """\
Answer the question below in one short paragraph of plain sentences, about Python.

Question: {question}

Answer:"""

CLAIMS_PROMPT = """\
List the factual claims that the text below makes, one claim per line. Write each claim as a \
short sentence that can be checked on its own; write nothing else.

Text: {answer}

Claims:"""

QUERIES_PROMPT = """\
Write two or three search queries, one per line, that would find passages of the Python \
documentation able to confirm or refute the claim below. Write nothing else.

Claim: {claim}

Queries:"""

VERDICT_PROMPT = """\
Judge the claim against the numbered evidence from the Python documentation. Reply on one \
line: SUPPORTED, REFUTED or NOT ENOUGH EVIDENCE, followed by the numbers of the evidence \
you rely on in brackets, like: SUPPORTED [1] [3]

Claim: {claim}

Evidence:
{evidence}

Verdict:"""

LABELS = ("supported", "refuted", "not enough evidence")
NOT_ENOUGH = "not enough evidence"
# The first of these words in the verdict's text decides its label.
_LABEL_WORDS = {
    "supported": "supported",
    "supports": "supported",
    "refuted": "refuted",
    "refutes": "refuted",
    "enough": NOT_ENOUGH,
    "insufficient": NOT_ENOUGH,
}

#: BM25 passages per query that the reranker looks at, and passages kept per query.
CANDIDATES, PER_QUERY = 8, 3
#: Passages of evidence kept per claim, over all of its queries.
EVIDENCE = 3
#: Words of a passage shown to the verdict LM, and characters of it shown in the report.
PROMPT_WORDS, EXCERPT_CHARS = 80, 160
#: A passage is a run of whole paragraphs of one help topic, at least this many words long.
PASSAGE_WORDS = 60
#: Invocations at a time per replica of the light sync stages. They are pure (the index and the
#: reranker are only read), so several may run at once; with the default of 1 for a sync stage
#: each call would wait for the previous one's acknowledgement to reach the router.
LIGHT = 16


# -- the corpus, the engines --------------------------------------------------------------------


def split_passages(text: str, min_words: int = PASSAGE_WORDS) -> list[str]:
    """Cut a help topic into passages of whole paragraphs, each ``min_words`` long or the last."""
    passages: list[str] = []
    current: list[str] = []
    words = 0
    for paragraph in re.split(r"\n\s*\n", text):
        if not paragraph.strip():
            continue
        current.append(paragraph.strip("\n"))
        words += len(paragraph.split())
        if words >= min_words:
            passages.append("\n\n".join(current))
            current, words = [], 0
    if current:
        passages.append("\n\n".join(current))
    return passages


def corpus() -> tuple[list[str], list[str]]:
    """The ids and texts of the passages to search: ``ALTOFLOW_CORPUS`` (``pydoc`` or ``foldoc``)."""
    name = os.environ.get("ALTOFLOW_CORPUS", "pydoc").strip().lower() or "pydoc"
    if name == "foldoc":
        from altoflow.retrieval import load_foldoc

        entries = load_foldoc()
        return [e.id for e in entries], [e.text for e in entries]
    if name != "pydoc":
        raise ValueError(
            f"ALTOFLOW_CORPUS={name!r} names no corpus; set it to pydoc (Python's help topics, "
            "the default) or foldoc (Debian's dict-foldoc)"
        )
    from pydoc_data.topics import topics

    ids, texts = [], []
    for topic, text in topics.items():
        for n, passage in enumerate(split_passages(text)):
            ids.append(f"{topic}/{n}")
            texts.append(passage)
    return ids, texts


@functools.cache
def index() -> BM25Index:
    """BM25 over the corpus, built once per process on first use."""
    ids, texts = corpus()
    return BM25Index.build(texts, ids=ids)


def load_reranker() -> ColBERTReranker | None:
    """The ColBERT reranker, or None for BM25 order: ``ALTOFLOW_RERANKER`` (auto, colbert, bm25)."""
    choice = os.environ.get("ALTOFLOW_RERANKER", "auto").strip().lower() or "auto"
    if choice not in ("auto", "colbert", "bm25"):
        raise ValueError(
            f"ALTOFLOW_RERANKER={choice!r} names no reranker; set it to auto (ColBERT when the "
            "colbert extra is installed, else BM25 order), colbert or bm25"
        )
    if choice == "bm25":
        return None
    try:
        return ColBERTReranker()
    except MissingExtraError:
        if choice == "colbert":
            raise
        return None


def clean_line(line: str) -> str:
    """A listed item without its bullet or number and without quotes around it."""
    return re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip('"').strip()


# -- the pipeline -------------------------------------------------------------------------------


def lm(pool: str) -> LM:
    """The engine of this event loop for the LM stage ``pool``, from the ``ALTOFLOW_LM*`` variables.

    One per process, event loop and pool (``altoflow.lm.loop_lm``): an HTTP client belongs to
    the loop that made it, and ``altoflow.run`` starts a new loop for each request.
    """
    return loop_lm(pool)


@stage(output=True)
async def answer(question: str) -> str:
    """The LM's answer to the question, one paragraph, streamed to the client token by token
    (``partial`` events) while the claims stage waits for the whole of it."""
    text = await lm("answer").complete(ANSWER_PROMPT.format(question=question), partial=True,
                                       max_tokens=200, temperature=0)
    return text.strip()


@stage(fanout="claim")
async def claims(answer: str) -> AsyncIterator[str]:
    """Each claim of the answer, passed on as soon as the LM has written its line."""
    prompt = CLAIMS_PROMPT.format(answer=answer)
    async for line in lm("claims").stream_lines(prompt, max_tokens=160, temperature=0):
        claim = clean_line(line)
        if claim:
            yield claim


@stage(fanout="query")
async def queries(claims: str) -> AsyncIterator[str]:
    """Search queries for one claim, each passed on as soon as its line is written."""
    prompt = QUERIES_PROMPT.format(claim=claims)
    async for line in lm("queries").stream_lines(prompt, max_tokens=60, temperature=0):
        query = clean_line(line)
        if query:
            yield query


@stage(fanout="token", concurrency=LIGHT)
def query_tokens(queries: str) -> Iterator[str]:
    """The query's BM25 tokens, one item each."""
    yield from index().tokenize(queries)


@stage(aggregate=ops.sum, replicas=2, concurrency=LIGHT)
def bm25(query_tokens: str) -> np.ndarray:
    """One token's BM25 score for every passage; summed per (request, claim, query)."""
    return index().token_scores(query_tokens)


@stage(fanout="candidate", concurrency=LIGHT)
class candidates:
    """The query's best passages: BM25's top ``CANDIDATES``, reranked, ``PER_QUERY`` kept."""

    def __init__(self) -> None:
        self.reranker = load_reranker()  # once per replica: ColBERT loads a model

    def __call__(self, queries: str, bm25: np.ndarray) -> Iterator[dict]:
        hits = index().top(bm25, CANDIDATES)
        if self.reranker is not None and hits:
            hits = self.reranker.rerank(queries, hits, k=PER_QUERY)
        ranker = "bm25" if self.reranker is None else "colbert"
        for hit in hits[:PER_QUERY]:
            # Rounded: a float sum may differ in its last bits with the order of the tokens.
            yield {"id": hit.id, "score": round(hit.score, 6), "ranker": ranker, "text": hit.text}


def score(passage: dict) -> float:
    return passage["score"]


@stage(aggregate=ops.topk(EVIDENCE, key=score), over="query", concurrency=LIGHT)
def evidence(candidates: dict) -> dict:
    """The best ``EVIDENCE`` passages over every query of one claim, best first."""
    return candidates


def distinct(passages: list[dict]) -> list[dict]:
    """The passages in order, each id once (two queries of a claim may find the same one)."""
    seen: set[str] = set()
    return [p for p in passages if not (p["id"] in seen or seen.add(p["id"]))]


def parse_verdict(text: str, shown: int) -> tuple[str, list[int]]:
    """The label the text gives first and the evidence numbers it cites (1-based, in range)."""
    label = next(
        (_LABEL_WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in _LABEL_WORDS),
        NOT_ENOUGH,
    )
    cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", text) if 1 <= int(n) <= shown})
    return label, cited


@stage
async def verdict(claims: str, evidence: list[dict]) -> dict:
    """Supported, refuted or not enough evidence, and the passages the verdict rests on.

    Those are the passages the LM cited by number or, when it cited none, all it was shown. A
    claim without evidence is not sent to the LM: there is nothing to judge it by.
    """
    engine = lm("verdict")
    shown = distinct(evidence)
    about = {"lm": engine.name, "simulated": engine.simulated}
    if not shown:
        return {"label": NOT_ENOUGH, "cited": [], **about}
    numbered = "\n".join(
        f"[{i}] ({p['id']}) {' '.join(p['text'].split()[:PROMPT_WORDS])}"
        for i, p in enumerate(shown, start=1)
    )
    text = await engine.complete(
        VERDICT_PROMPT.format(claim=claims, evidence=numbered), max_tokens=32, temperature=0
    )
    label, cited = parse_verdict(text, len(shown))
    ids = [shown[n - 1]["id"] for n in cited] or [p["id"] for p in shown]
    return {"label": label, "cited": ids, **about}


@stage(concurrency=LIGHT)
def report(claims: str, evidence: list[dict], verdict: dict) -> dict:
    """One claim's line of the report: the claim, its verdict, and the evidence behind it."""
    return {
        "claim": claims,
        "verdict": verdict["label"],
        "cited": verdict["cited"],
        "evidence": [
            {"id": p["id"], "score": p["score"], "ranker": p["ranker"],
             "excerpt": " ".join(p["text"].split())[:EXCERPT_CHARS]}
            for p in distinct(evidence)
        ],
        "lm": verdict["lm"],
        "simulated": verdict["simulated"],
    }
