"""BM25Index against rank-bm25 itself (the oracle), on FOLDOC and on small corpora."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

rank_bm25 = pytest.importorskip("rank_bm25")

import altoflow as af
from altoflow import ops, stage
from altoflow.retrieval import (
    BM25Index,
    DictEntry,
    Hit,
    IndexFormatError,
    default_tokenize,
)

# (query, the FOLDOC entry it asks for, the rank BM25 must reach at worst)
KNOWN_ANSWERS = [
    ("high-level interpreted language by Guido van Rossum", "Python", 1),
    ("automatic reclamation of unused memory", "garbage collection", 1),
    ("quicksort sorting algorithm", "Quicksort", 1),
    ("garbage collector", "garbage collection", 1),
    ("transmission control protocol internet protocol", "TCP/IP", 3),
    ("Ken Thompson Dennis Ritchie operating system Bell Labs", "Unix", 10),
    ("compiler", "compiler", 10),
]
QUERIES = [q for q, _, _ in KNOWN_ANSWERS] + ["what is a compiler", "the the the", "zzzz-not-a-word", ""]


@pytest.fixture(scope="module")
def oracle(foldoc: list[DictEntry]):
    return rank_bm25.BM25Okapi([default_tokenize(e.text) for e in foldoc])


@pytest.mark.parametrize(("query", "answer", "worst_rank"), KNOWN_ANSWERS)
def test_known_answers_on_foldoc(foldoc_index: BM25Index, query: str, answer: str, worst_rank: int) -> None:
    ids = [hit.id for hit in foldoc_index.search(query, k=worst_rank)]
    assert answer in ids, f"{answer!r} not in the top {worst_rank} for {query!r}: {ids}"


@pytest.mark.parametrize("query", QUERIES)
def test_scores_equal_rank_bm25(foldoc_index: BM25Index, oracle, query: str) -> None:
    expected = oracle.get_scores(default_tokenize(query))
    np.testing.assert_allclose(foldoc_index.scores(query), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("query", QUERIES)
def test_token_scores_sum_to_the_query_score(foldoc_index: BM25Index, oracle, query: str) -> None:
    tokens = foldoc_index.tokenize(query)
    total = sum((foldoc_index.token_scores(t) for t in tokens), np.zeros(len(foldoc_index)))
    np.testing.assert_allclose(total, oracle.get_scores(tokens), rtol=1e-12, atol=0)
    # Each token alone is rank-bm25's score of the one-token query.
    for token in set(tokens):
        np.testing.assert_allclose(
            foldoc_index.token_scores(token), oracle.get_scores([token]), rtol=1e-12, atol=0
        )


def test_search_is_the_top_of_the_oracle(foldoc_index: BM25Index, oracle) -> None:
    query = "transmission control protocol internet protocol"
    expected = oracle.get_scores(default_tokenize(query))
    best = sorted(range(len(expected)), key=lambda d: (-expected[d], d))[:20]
    hits = foldoc_index.search(query, k=20)
    assert [h.id for h in hits] == [foldoc_index.ids[d] for d in best]
    assert [h.score for h in hits] == pytest.approx([expected[d] for d in best], rel=1e-12)
    assert hits[0].text == foldoc_index.text(hits[0].id)


def test_token_scores_is_a_fresh_array(foldoc_index: BM25Index) -> None:
    first = foldoc_index.token_scores("compiler")
    first[:] = -1
    assert (foldoc_index.token_scores("compiler") >= 0).all()


def test_unknown_token_scores_zero(foldoc_index: BM25Index) -> None:
    scores = foldoc_index.token_scores("qqqqxyzzy")
    assert scores.shape == (len(foldoc_index),) and not scores.any()
    assert foldoc_index.search("qqqqxyzzy") == []


def test_token_scores_takes_exactly_one_token(foldoc_index: BM25Index) -> None:
    with pytest.raises(ValueError) as info:
        foldoc_index.token_scores("Garbage collection")
    assert str(info.value) == (
        "token_scores takes one token as index.tokenize() returns it; 'Garbage collection' tokenizes to "
        "['garbage', 'collection']. Split the text first: [index.token_scores(t) for t in index.tokenize(text)]"
    )
    with pytest.raises(TypeError, match="takes one token"):
        foldoc_index.token_scores(["garbage"])  # type: ignore[arg-type]


def test_search_takes_text_not_tokens(foldoc_index: BM25Index) -> None:
    with pytest.raises(TypeError, match=r"call index\.top\(scores, k\)"):
        foldoc_index.search(["garbage", "collection"])  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_k_must_be_positive(foldoc_index: BM25Index, k) -> None:
    with pytest.raises(ValueError, match="k must be a positive int"):
        foldoc_index.search("compiler", k=k)


def test_top_accepts_ops_sum_identity_and_checks_shape(foldoc_index: BM25Index) -> None:
    assert foldoc_index.top(0, 5) == []
    with pytest.raises(ValueError, match=rf"expected {len(foldoc_index)} scores"):
        foldoc_index.top(np.ones(3), 5)


# -- small corpora: ranking rules, build errors ---------------------------------------------------

DOCS = ["the cat sat", "the dog sat", "a cat and a dog", "birds fly", "cats and dogs and birds"]


def test_ties_break_by_index_order_and_zero_scores_are_not_hits() -> None:
    index = BM25Index.build(["red apple", "green apple", "red apple", "blue sky", "sky"], ids=list("abcde"))
    hits = index.search("apple", k=10)
    assert [h.id for h in hits] == ["a", "b", "c"]  # three equal scores, in index order
    assert len({h.score for h in hits}) == 1
    assert [h.id for h in index.search("apple", k=2)] == ["a", "b"]


def test_default_ids_and_custom_ids() -> None:
    assert BM25Index.build(DOCS).ids == ("0", "1", "2", "3", "4")
    index = BM25Index.build(DOCS, ids=[f"doc{i}" for i in range(5)])
    assert index.search("birds fly", k=1) == [
        Hit(id="doc3", score=pytest.approx(index.scores("birds fly")[3]), text="birds fly")
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"docs": DOCS, "ids": ["a"]}, ValueError, "5 docs but 1 ids"),
        ({"docs": DOCS[:2], "ids": ["a", "a"]}, ValueError, "ids must be unique; 'a' appears more than once"),
        ({"docs": ["", "!!"]}, ValueError, "needs at least one document with at least one token"),
        ({"docs": []}, ValueError, "needs at least one document with at least one token"),
        ({"docs": "one text"}, TypeError, r"wrap it: build\(\[text\]\)"),
    ],
)
def test_build_errors(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        BM25Index.build(**kwargs)


def test_parameters_reach_rank_bm25() -> None:
    corpus = ["a b c", "a a d", "b d e f g", "c"]
    index = BM25Index.build(corpus, k1=0.9, b=0.3, epsilon=0.5)
    oracle = rank_bm25.BM25Okapi([default_tokenize(d) for d in corpus], k1=0.9, b=0.3, epsilon=0.5)
    for query in ["a", "a d", "b c g", "a a"]:
        np.testing.assert_allclose(
            index.scores(query), oracle.get_scores(default_tokenize(query)), rtol=1e-12
        )


# -- save and load -------------------------------------------------------------------------------


def test_save_load_round_trip(foldoc_index: BM25Index, tmp_path: Path) -> None:
    path = foldoc_index.save(tmp_path / "foldoc-bm25")
    assert sorted(p.name for p in path.iterdir()) == ["docs.json", "meta.json", "postings.npz"]
    loaded = BM25Index.load(path)
    assert len(loaded) == len(foldoc_index) and loaded.ids == foldoc_index.ids
    assert (loaded.k1, loaded.b, loaded.epsilon) == (1.5, 0.75, 0.25)
    for query, _, _ in KNOWN_ANSWERS:
        assert loaded.search(query, k=10) == foldoc_index.search(query, k=10)
    for token in ["compiler", "unix", "the", "zzz"]:
        np.testing.assert_array_equal(loaded.token_scores(token), foldoc_index.token_scores(token))


def test_saved_files_are_data_not_pickles(tmp_path: Path) -> None:
    path = BM25Index.build(DOCS).save(tmp_path / "idx")
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == "altoflow.bm25" and meta["version"] == 1
    assert meta["tokenizer"] == "altoflow.retrieval.bm25.default_tokenize"
    with zipfile.ZipFile(path / "postings.npz") as archive:
        assert sorted(archive.namelist()) == ["doc_index.npy", "indptr.npy", "weights.npy"]
    with np.load(path / "postings.npz", allow_pickle=False) as arrays:
        assert {arrays[name].dtype.kind for name in arrays.files} <= {"i", "f"}


def shout_tokenize(text: str) -> list[str]:
    return text.upper().split()


def test_custom_tokenizer_must_be_given_back_on_load(tmp_path: Path) -> None:
    path = BM25Index.build(DOCS, tokenizer=shout_tokenize).save(tmp_path / "idx")
    with pytest.raises(IndexFormatError) as info:
        BM25Index.load(path)
    assert str(info.value) == (
        f"{path} was built with tokenizer test_bm25.shout_tokenize, not "
        "altoflow.retrieval.bm25.default_tokenize; load it with the same one: "
        "BM25Index.load(path, tokenizer=<test_bm25.shout_tokenize>)"
    )
    loaded = BM25Index.load(path, tokenizer=shout_tokenize)
    assert loaded.tokenize("birds fly") == ["BIRDS", "FLY"]
    assert [h.id for h in loaded.search("Birds FLY", k=1)] == ["3"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(
        IndexFormatError, match=r"is not a saved BM25Index: missing meta\.json, docs\.json, postings\.npz"
    ):
        BM25Index.load(tmp_path)
    path = BM25Index.build(DOCS).save(tmp_path / "idx")
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(
        IndexFormatError, match="version 99; this altoflow reads 'altoflow.bm25' version 1. Rebuild"
    ):
        BM25Index.load(path)


# -- in a pipeline: fan a query out into tokens, fold their scores with ops.sum --------------------


def test_per_token_fanout_in_a_pipeline_matches_search(foldoc_index: BM25Index) -> None:
    index = foldoc_index

    @stage(fanout="token")
    def query_tokens(query: str):
        yield from index.tokenize(query)

    @stage(aggregate=ops.sum, replicas=3)
    def bm25(query_tokens: str) -> np.ndarray:
        return index.token_scores(query_tokens)

    @stage
    def hits(bm25: np.ndarray) -> list[Hit]:
        return index.top(bm25, 5)

    pipeline = af.Pipeline([query_tokens, bm25, hits])
    for query in ["Ken Thompson Dennis Ritchie operating system Bell Labs", "garbage collector", "?!"]:
        got = af.run(pipeline, query=query)["hits"]
        expected = index.search(query, k=5)
        # ops.sum folds in arrival order, so scores may differ in the last bits only.
        assert [h.id for h in got] == [h.id for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], rel=1e-12)
