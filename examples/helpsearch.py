"""Search Python's own help topics, the way the ALTO paper's FacTool pipeline searches evidence.

A question is split into sub-queries (fan-out ``query``), each sub-query into search terms
(fan-out ``term``); every term is scored against the corpus on its own, and the term scores of
one sub-query are summed by an aggregate stage that altoflow keys by (request, query), so one
replica sees all of a query's terms. The corpus is ``pydoc_data.topics``, which ships with
Python: no network, no model, no GPU.

    altoflow compile examples/helpsearch.py
    altoflow run examples/helpsearch.py --input '{"question": "format strings and the with statement"}'
"""

from __future__ import annotations

import math
import re
from collections import Counter

from pydoc_data.topics import topics

from altoflow import ops, stage

_WORD = re.compile(r"[a-z_][a-z_0-9]+")
_STOP = frozenset(
    "a an and are as at be by do does for from how i in is it of on or the this to what when "
    "where which why with you your".split()
) - {"with"}  # 'with' is a statement worth finding


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class _Index:
    """BM25 over the help topics, scored one term at a time (k1=1.2, b=0.75)."""

    def __init__(self, docs: dict[str, str], k1: float = 1.2, b: float = 0.75) -> None:
        self.tf = {name: Counter(words(name.replace("-", " ") + " " + text)) for name, text in docs.items()}
        self.length = {name: sum(tf.values()) for name, tf in self.tf.items()}
        self.avg = sum(self.length.values()) / len(self.length)
        df: Counter = Counter()
        for tf in self.tf.values():
            df.update(tf.keys())
        n = len(docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}
        self.k1, self.b = k1, b

    def term_scores(self, term: str) -> Counter:
        idf = self.idf.get(term)
        if idf is None:
            return Counter()
        scores = Counter()
        for name, tf in self.tf.items():
            f = tf.get(term)
            if f:
                norm = self.k1 * (1 - self.b + self.b * self.length[name] / self.avg)
                scores[name] = idf * f * (self.k1 + 1) / (f + norm)
        return scores


INDEX = _Index(topics)


@stage(fanout="query")
def queries(question: str):
    """One sub-query per clause of the question."""
    for part in re.split(r",|;|\band\b|\?", question):
        if words(part):
            yield part.strip()


@stage(fanout="term")
def terms(queries: str):
    """The search terms of one sub-query."""
    for w in words(queries):
        if w not in _STOP:
            yield w


@stage(aggregate=ops.sum, replicas=2)
def scores(terms: str) -> Counter:
    """Per-topic BM25 score of one term; summed over the terms of each query."""
    return INDEX.term_scores(terms)


@stage(output=True)
def best(scores: Counter, queries: str) -> dict:
    """The three best topics for one sub-query."""
    top = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return {"query": queries, "topics": [name for name, _ in top]}


@stage(aggregate=ops.collect, over="query")
def report(best: dict) -> str:
    """One line per sub-query, in question order."""
    return f"{best['query']!r}: {', '.join(best['topics']) or 'no match'}"
