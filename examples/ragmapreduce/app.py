"""Retrieval-augmented map-reduce: answer a question from many passages, summarised in parallel.

BM25 retrieves the ``k`` best passages of Python's own documentation for the question (fan-out
``passage``, one item per passage); an LM summarises each passage with the question in mind, all
of them at once (map); ``ops.collect`` gathers one request's summaries in retrieval order
(reduce); and a last LM call writes the answer from the numbered summaries, citing them.

The corpus is ``pydoc_data.topics``, the help topics that ship with Python, cut into passages of
a paragraph or a few: no download, no network (``ALTOFLOW_CORPUS=foldoc`` searches Debian's FOLDOC
dictionary instead). The LM comes from the ``ALTOFLOW_LM*`` variables (the simulated engine
unless they say otherwise; see ``altoflow.lm.settings``).

    altoflow compile examples/ragmapreduce/app.py
    altoflow run examples/ragmapreduce/app.py --input "$(cat examples/ragmapreduce/input.json)"
"""

from __future__ import annotations

import functools
import os
import re
from typing import Annotated

from pydantic import Field

from altoflow import ops, stage
from altoflow.lm import LM, loop_lm
from altoflow.retrieval import BM25Index

SUMMARY_PROMPT = """\
Summarise, in two or three sentences, what the passage below says that helps to answer the \
question. Use only the passage; if it does not help, say so in one sentence.

Question: {question}

Passage {id}:
{text}

Summary:"""

ANSWER_PROMPT = """\
Answer the question from the numbered notes below, each a summary of one retrieved passage. \
Cite every note you use by its number in brackets, like [2].

Question: {question}

Notes:
{notes}

Answer:"""

# A passage is a run of whole paragraphs of one help topic, at least this many words long.
PASSAGE_WORDS = 60


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



def lm(pool: str) -> LM:
    """The engine of this event loop for the LM stage ``pool``, from the ``ALTOFLOW_LM*`` variables.

    One per process, event loop and pool (``altoflow.lm.loop_lm``): an HTTP client belongs to
    the loop that made it, and ``altoflow.run`` starts a new loop for each request.
    """
    return loop_lm(pool)

@stage(fanout="passage")
def passages(question: str, k: Annotated[int, Field(ge=1, le=50)] = 4):
    """The ``k`` best passages for the question, best first."""
    for hit in index().search(question, k):
        yield {"id": hit.id, "score": round(hit.score, 3), "text": hit.text}


@stage(output=True)
async def summary(passages: dict, question: str) -> dict:
    """What one passage says about the question (map: every passage at once)."""
    prompt = SUMMARY_PROMPT.format(question=question, id=passages["id"], text=passages["text"])
    text = await lm("summary").complete(prompt, max_tokens=96, temperature=0)
    return {"id": passages["id"], "summary": text.strip()}


@stage(aggregate=ops.collect, over="passage")
def summaries(summary: dict) -> dict:
    """One request's summaries, in retrieval order (reduce)."""
    return summary


@stage(output=True)
async def answer(summaries: list[dict], question: str) -> dict:
    """The answer, written from every summary; ``sources[i]`` is the passage of note ``[i+1]``."""
    engine = lm("synthesis")
    if not summaries:
        return {"answer": "No passage of the corpus matches the question.",
                "sources": [], "lm": engine.name}
    notes = "\n".join(f"[{i}] {s['summary']}" for i, s in enumerate(summaries, start=1))
    text = await engine.complete(
        ANSWER_PROMPT.format(question=question, notes=notes), max_tokens=200, temperature=0
    )
    return {"answer": text.strip(), "sources": [s["id"] for s in summaries], "lm": engine.name}
