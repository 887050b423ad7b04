"""The RAG map-reduce app: one summary per retrieved passage, an answer from all of them, and
the same result served as in-process."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

import altoflow as af
from altoflow.client import Client
from altoflow.lm import LM
from altoflow.server.served import ServedIngress
from altoflow.server import create_app, serve_in_thread

HERE = Path(__file__).resolve().parent
TARGET = str(HERE / "app.py")
EXAMPLE = json.loads((HERE / "input.json").read_text())


def _load_app():
    spec = importlib.util.spec_from_file_location("ragmapreduce_app_under_test", TARGET)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


app = _load_app()


@pytest.fixture(autouse=True)
def fast_simulated_lm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ALTOFLOW_LM", "ALTOFLOW_LM_URL", "ALTOFLOW_LM_MODEL", "ALTOFLOW_LM_SEED",
                 "ALTOFLOW_CORPUS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALTOFLOW_LM_SPEED", "100")


class RecordingLM(LM):
    """Answers every prompt with the same text and keeps the prompts."""

    name = "recording"

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.prompts: list[str] = []

    async def _generate(self, prompt, sampling):
        self.prompts.append(prompt)
        yield self.text


def test_passages_keep_every_paragraph_in_order() -> None:
    text = "\n\n".join(f"paragraph {i} " + "word " * (10 * i) for i in range(1, 8))
    passages = app.split_passages(text, min_words=25)
    assert "\n\n".join(passages) == text
    assert all(len(p.split()) >= 25 for p in passages[:-1])


def test_the_index_covers_every_help_topic() -> None:
    from pydoc_data.topics import topics

    ids = app.index().ids
    assert {i.split("/")[0] for i in ids} == set(topics)
    assert app.index().search("context manager __enter__ __exit__", 1)[0].id.startswith("with/")


def test_an_unknown_corpus_is_named_with_the_choices(monkeypatch) -> None:
    monkeypatch.setenv("ALTOFLOW_CORPUS", "wikipedia")
    with pytest.raises(ValueError, match="ALTOFLOW_CORPUS='wikipedia' names no corpus; set it to pydoc"):
        app.corpus()


def test_foldoc_is_the_other_corpus(monkeypatch) -> None:
    from altoflow.retrieval import CorpusNotFoundError, load_foldoc

    try:
        load_foldoc()
    except CorpusNotFoundError:
        pytest.skip("FOLDOC is not installed (apt-get install dict-foldoc)")
    monkeypatch.setenv("ALTOFLOW_CORPUS", "foldoc")
    app.index.cache_clear()
    try:
        hits = list(app.passages(question="What is a compiler?", k=3))
    finally:
        app.index.cache_clear()
    assert len(hits) == 3 and any("compiler" in h["text"].lower() for h in hits)


def test_one_summary_per_retrieved_passage_and_the_answer_cites_them_all() -> None:
    result = af.run(TARGET, **EXAMPLE)
    hits = app.index().search(EXAMPLE["question"], EXAMPLE["k"])
    assert len(hits) == EXAMPLE["k"]
    assert [s["id"] for s in result["summary"]] == [h.id for h in hits]
    assert all(s["summary"] for s in result["summary"])
    answer = result["answer"]
    assert answer["sources"] == [h.id for h in hits]
    assert answer["answer"] and answer["lm"] == "altoflow-simulated"


def test_the_answer_prompt_holds_every_summary_by_number(monkeypatch) -> None:
    recorder = RecordingLM("Use a with statement [1], which calls __exit__ [2].")
    monkeypatch.setattr(app, "lm", lambda pool: recorder)
    summaries = [{"id": "with/0", "summary": "It calls __enter__."},
                 {"id": "with/1", "summary": "It calls __exit__ at the end."}]
    out = asyncio.run(app.answer(summaries=summaries, question="what does with do?"))
    (prompt,) = recorder.prompts
    assert "[1] It calls __enter__." in prompt and "[2] It calls __exit__ at the end." in prompt
    assert out == {"answer": recorder.text, "sources": ["with/0", "with/1"], "lm": "recording"}


def test_a_question_that_matches_nothing_gets_no_summaries_and_says_so() -> None:
    result = af.run(TARGET, question="zzzqqq xxyyzz", k=3)
    assert result["summary"] == []
    assert result["answer"]["sources"] == []
    assert "No passage" in result["answer"]["answer"]


def test_k_must_be_at_least_one() -> None:
    with pytest.raises(af.InputError, match="k"):
        af.run(TARGET, question="lambda", k=0)


@pytest.mark.timeout(240)
def test_served_result_equals_altoflow_run() -> None:
    requests = [EXAMPLE, {"question": "How are exceptions raised and caught?", "k": 3},
                {"question": "zzzqqq xxyyzz"}]
    with serve_in_thread(create_app(ServedIngress(TARGET))) as url, Client(url, timeout=120) as client:
        for fields in requests:
            got, want = client.run(**fields), af.run(TARGET, **fields)
            assert got.to_dict() == json.loads(json.dumps(want.to_dict())), fields
            assert got.items_with_ancestry("summary") == want.items_with_ancestry("summary")
