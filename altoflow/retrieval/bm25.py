"""BM25 (Okapi) retrieval on rank-bm25, with a per-token scoring interface.

Theory of operation. rank-bm25's ``BM25Okapi`` fits the model: document lengths, term
frequencies and idf (with its floor for terms in more than half of the documents). A query's
BM25 score is a sum over its tokens, so the index stores that model as one sparse row per
vocabulary term holding the term's contribution to each document that contains it::

    w(t, d) = idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

which is rank-bm25's own expression, term by term. Then

- ``token_scores(t)`` is row ``t`` made dense: the per-document scores of one query token;
- ``scores(query)`` adds the rows of the query's tokens, in order, and equals
  ``BM25Okapi.get_scores(tokens)`` (the tests check this against rank-bm25 itself);
- so a pipeline can fan a query out into tokens, score each one on its own replica, fold the
  arrays with ``ops.sum`` and turn the sum into hits with ``top(scores, k)``, as in the ALTO
  paper, and get the same ranking as ``search(query, k)``.

Only ``build`` needs rank-bm25. A saved index is the sparse rows (numpy ``.npz``) plus JSON, so
``load``, ``search`` and ``token_scores`` need numpy alone, and loading runs no code from disk.
numpy itself is imported inside the methods so that ``import altoflow.retrieval`` works on an
install without the ``bm25`` extra.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altoflow.retrieval._common import Hit, require

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BM25Index", "IndexFormatError", "Tokenizer", "default_tokenize"]

Tokenizer = Callable[[str], list[str]]

_FORMAT = "altoflow.bm25"
_FORMAT_VERSION = 1
_META, _DOCS, _POSTINGS = "meta.json", "docs.json", "postings.npz"

_WORD = re.compile(r"\w+")


def default_tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters, digits and underscores: ``"TCP/IP stack"`` -> ``["tcp", "ip", "stack"]``."""
    return _WORD.findall(text.lower())


class IndexFormatError(ValueError):
    """A saved index cannot be loaded as it is: not an index, another format version, or a
    tokenizer that does not match the one it was built with."""


def _numpy() -> Any:
    return require("numpy", extra="bm25", needed_for="BM25Index")


def _tokenizer_name(tokenizer: Tokenizer) -> str:
    module = getattr(tokenizer, "__module__", None) or "?"
    qualname = getattr(tokenizer, "__qualname__", None) or type(tokenizer).__qualname__
    return f"{module}.{qualname}"


def _positive_k(k: Any, method: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"BM25Index.{method}: k must be a positive int, got {k!r}")
    return k


class BM25Index:
    """A BM25 index over a fixed corpus. Immutable, so one instance can serve many threads.

    Make one with ``BM25Index.build(docs)`` or ``BM25Index.load(path)``.
    """

    def __init__(
        self,
        *,
        ids: Sequence[str],
        texts: Sequence[str],
        vocabulary: Sequence[str],
        indptr: np.ndarray,
        doc_index: np.ndarray,
        weights: np.ndarray,
        k1: float,
        b: float,
        epsilon: float,
        tokenizer: Tokenizer,
    ) -> None:
        # Rows of a CSR matrix, one per term: postings of term i are
        # doc_index[indptr[i]:indptr[i+1]] with weights[indptr[i]:indptr[i+1]].
        self._ids = tuple(ids)
        self._position = {doc_id: d for d, doc_id in enumerate(self._ids)}
        self._texts = tuple(texts)
        self._rows = {term: i for i, term in enumerate(vocabulary)}
        self._vocabulary = tuple(vocabulary)
        self._indptr = indptr
        self._doc_index = doc_index
        self._weights = weights
        self.k1, self.b, self.epsilon = k1, b, epsilon
        self._tokenizer = tokenizer

    # -- making one ----------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        docs: Sequence[str],
        ids: Sequence[str] | None = None,
        tokenizer: Tokenizer = default_tokenize,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
    ) -> BM25Index:
        """Index ``docs`` (texts). ``ids`` default to ``"0"``, ``"1"``, ...; they must be unique.

        ``k1``, ``b`` and ``epsilon`` are rank-bm25's ``BM25Okapi`` parameters, with its defaults.
        ``tokenizer`` maps a text to its tokens and must map each of its own tokens to itself
        (``token_scores`` checks that its argument is one token).
        """
        rank_bm25 = require("rank_bm25", extra="bm25", needed_for="BM25Index.build")
        np = _numpy()
        if isinstance(docs, str):
            raise TypeError("BM25Index.build takes a sequence of texts, got one str; wrap it: build([text])")
        docs = list(docs)
        ids = [str(i) for i in range(len(docs))] if ids is None else [str(i) for i in ids]
        if len(ids) != len(docs):
            raise ValueError(f"BM25Index.build: {len(docs)} docs but {len(ids)} ids; give one id per doc")
        repeated = [i for i, n in Counter(ids).items() if n > 1]
        if repeated:
            raise ValueError(f"BM25Index.build: ids must be unique; {repeated[0]!r} appears more than once")

        corpus = [tokenizer(doc) for doc in docs]
        if not any(corpus):
            raise ValueError(
                "BM25Index.build needs at least one document with at least one token "
                f"({len(docs)} docs given, tokenized by {_tokenizer_name(tokenizer)})"
            )
        # Tokenized corpus in, no tokenizer: given a tokenizer, rank-bm25 starts a process pool.
        model = rank_bm25.BM25Okapi(corpus, k1=k1, b=b, epsilon=epsilon)

        vocabulary = sorted(model.idf)
        row_of = {term: i for i, term in enumerate(vocabulary)}
        terms: list[int] = []
        postings: list[int] = []
        freqs: list[int] = []
        for d, frequencies in enumerate(model.doc_freqs):
            for term, tf in frequencies.items():
                terms.append(row_of[term])
                postings.append(d)
                freqs.append(tf)
        term_arr = np.asarray(terms, dtype=np.int64)
        # Stable sort keeps each row's documents in ascending order.
        order = np.argsort(term_arr, kind="stable")
        term_arr = term_arr[order]
        doc_index = np.asarray(postings, dtype=np.int32)[order]
        tf = np.asarray(freqs, dtype=np.int64)[order]
        idf = np.asarray([model.idf[t] for t in vocabulary], dtype=np.float64)
        doc_len = np.asarray(model.doc_len, dtype=np.int64)[doc_index]
        # Same expression, in the same order of operations, as BM25Okapi.get_scores.
        weights = idf[term_arr] * (
            tf * (model.k1 + 1) / (tf + model.k1 * (1 - model.b + model.b * doc_len / model.avgdl))
        )
        indptr = np.zeros(len(vocabulary) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term_arr, minlength=len(vocabulary)), out=indptr[1:])
        return cls(
            ids=ids,
            texts=docs,
            vocabulary=vocabulary,
            indptr=indptr,
            doc_index=doc_index,
            weights=weights,
            k1=k1,
            b=b,
            epsilon=epsilon,
            tokenizer=tokenizer,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to the directory ``path`` (created if needed) and return it.

        Files: ``meta.json`` (parameters, tokenizer name, vocabulary), ``docs.json`` (ids and
        texts) and ``postings.npz`` (the sparse rows). No pickle anywhere.
        """
        np = _numpy()
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "k1": self.k1,
            "b": self.b,
            "epsilon": self.epsilon,
            "tokenizer": _tokenizer_name(self._tokenizer),
            "num_docs": len(self._ids),
            "vocabulary": list(self._vocabulary),
        }
        (directory / _META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        docs = {"ids": list(self._ids), "texts": list(self._texts)}
        (directory / _DOCS).write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
        np.savez(directory / _POSTINGS, indptr=self._indptr, doc_index=self._doc_index, weights=self._weights)
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike[str], tokenizer: Tokenizer | None = None) -> BM25Index:
        """Read an index written by ``save``.

        Pass ``tokenizer`` if the index was built with one other than ``default_tokenize``: a
        function cannot be stored as data, so its name is stored and checked instead.
        """
        np = _numpy()
        directory = Path(path)
        missing = [name for name in (_META, _DOCS, _POSTINGS) if not (directory / name).is_file()]
        if missing:
            raise IndexFormatError(
                f"{directory} is not a saved BM25Index: missing {', '.join(missing)} "
                "(write one with BM25Index.build(docs).save(path))"
            )
        meta = json.loads((directory / _META).read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT or meta.get("version") != _FORMAT_VERSION:
            raise IndexFormatError(
                f"{directory / _META} is format {meta.get('format')!r} version {meta.get('version')!r}; "
                f"this altoflow reads {_FORMAT!r} version {_FORMAT_VERSION}. Rebuild the index."
            )
        tokenizer = default_tokenize if tokenizer is None else tokenizer
        if meta["tokenizer"] != _tokenizer_name(tokenizer):
            raise IndexFormatError(
                f"{directory} was built with tokenizer {meta['tokenizer']}, not {_tokenizer_name(tokenizer)}; "
                f"load it with the same one: BM25Index.load(path, tokenizer=<{meta['tokenizer']}>)"
            )
        docs = json.loads((directory / _DOCS).read_text(encoding="utf-8"))
        with np.load(directory / _POSTINGS, allow_pickle=False) as arrays:
            indptr, doc_index, weights = arrays["indptr"], arrays["doc_index"], arrays["weights"]
        if len(docs["ids"]) != meta["num_docs"] or len(indptr) != len(meta["vocabulary"]) + 1:
            raise IndexFormatError(f"{directory}: its files disagree on the number of documents or terms")
        return cls(
            ids=docs["ids"],
            texts=docs["texts"],
            vocabulary=meta["vocabulary"],
            indptr=indptr,
            doc_index=doc_index,
            weights=weights,
            k1=meta["k1"],
            b=meta["b"],
            epsilon=meta["epsilon"],
            tokenizer=tokenizer,
        )

    # -- using one -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"BM25Index({len(self._ids)} docs, {len(self._vocabulary)} terms, k1={self.k1}, b={self.b}, "
            f"epsilon={self.epsilon}, tokenizer={_tokenizer_name(self._tokenizer)})"
        )

    @property
    def ids(self) -> tuple[str, ...]:
        """Document ids, in index order (the order of every score array)."""
        return self._ids

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Every token of the corpus, sorted (one row of the index each); others score 0."""
        return self._vocabulary

    def text(self, doc_id: str) -> str:
        """The text of the document ``doc_id``."""
        try:
            return self._texts[self._position[doc_id]]
        except KeyError:
            raise KeyError(f"no document with id {doc_id!r} in this index") from None

    def tokenize(self, text: str) -> list[str]:
        """The index's tokens of ``text``: what ``token_scores`` takes, one at a time."""
        return self._tokenizer(text)

    def token_scores(self, token: str) -> np.ndarray:
        """BM25 contribution of one query token to every document (float64, index order).

        A new array each call. A token not in the vocabulary scores 0 everywhere. Summed over a
        query's tokens it equals ``scores(query)``.
        """
        np = _numpy()
        if not isinstance(token, str):
            raise TypeError(f"token_scores takes one token (str), got {type(token).__name__}")
        if self._tokenizer(token) != [token]:
            raise ValueError(
                f"token_scores takes one token as index.tokenize() returns it; {token!r} tokenizes to "
                f"{self._tokenizer(token)!r}. Split the text first: "
                "[index.token_scores(t) for t in index.tokenize(text)]"
            )
        out = np.zeros(len(self._ids), dtype=np.float64)
        self._add_row(out, token)
        return out

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of ``query`` for every document (float64, index order)."""
        np = _numpy()
        if not isinstance(query, str):
            raise TypeError(
                f"scores takes the query text (str), got {type(query).__name__}; for tokens you "
                "already have, add up index.token_scores(t)"
            )
        out = np.zeros(len(self._ids), dtype=np.float64)
        for token in self._tokenizer(query):
            self._add_row(out, token)
        return out

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The ``k`` best documents for ``query``, best first (ties: index order).

        Only documents with a positive score are hits, so fewer than ``k`` may come back.
        """
        if not isinstance(query, str):
            raise TypeError(
                f"search takes the query text (str), got {type(query).__name__}; for token scores "
                "you already summed, call index.top(scores, k)"
            )
        return self.top(self.scores(query), _positive_k(k, "search"))

    def top(self, scores: np.ndarray | int, k: int = 10) -> list[Hit]:
        """Turn a score array (e.g. an ``ops.sum`` of ``token_scores``) into the ``k`` best hits.

        ``scores`` is an array of ``len(index)`` scores in index order, or the ``0`` that
        ``ops.sum`` yields for a query without tokens (no hits). Best first, ties in index
        order; only positive scores are hits.
        """
        np = _numpy()
        k = _positive_k(k, "top")
        if np.ndim(scores) == 0 and scores == 0:
            return []
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(self._ids),):
            raise ValueError(
                f"BM25Index.top: expected {len(self._ids)} scores (one per document), got shape {scores.shape}"
            )
        candidates = np.flatnonzero(scores > 0)
        if len(candidates) > k:
            # Keep every candidate tied with the k-th best so that ties break by index, not by
            # argpartition's arbitrary order.
            kth = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
            candidates = candidates[scores[candidates] >= kth]
        order = np.lexsort((candidates, -scores[candidates]))[:k]
        return [Hit(id=self._ids[d], score=float(scores[d]), text=self._texts[d]) for d in candidates[order]]

    def _add_row(self, out: np.ndarray, token: str) -> None:
        row = self._rows.get(token)
        if row is None:
            return
        start, end = self._indptr[row], self._indptr[row + 1]
        # A document appears once per row, so fancy-index += adds each posting exactly once.
        out[self._doc_index[start:end]] += self._weights[start:end]
