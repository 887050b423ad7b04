"""The LangGraph twin of the claim verifier gives the app's answer on the same input.

With the deterministic simulated engine, the same prompts give the same text, so the twin must
find the same claims, the same evidence and the same verdict for each claim as altoflow does.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

import altoflow as af

pytest.importorskip("langgraph")

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "examples" / "claimverify" / "app.py")
QUESTIONS = [
    json.loads((ROOT / "examples" / "claimverify" / "input.json").read_text())["question"],
    "How are exceptions raised and caught in Python?",
]


@pytest.fixture(scope="module")
def twin():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALTOFLOW_LM", "sim")
        mp.setenv("ALTOFLOW_LM_SPEED", "100")
        mp.setenv("ALTOFLOW_RERANKER", "bm25")
        sys.path.insert(0, str(ROOT / "benchmarks" / "langgraph"))
        try:
            import claimverify
        finally:
            sys.path.remove(str(ROOT / "benchmarks" / "langgraph"))
        yield claimverify


@pytest.mark.parametrize("question", QUESTIONS)
def test_twin_gives_the_apps_answer(twin, question, monkeypatch):
    monkeypatch.setenv("ALTOFLOW_LM_SPEED", "100")
    monkeypatch.setenv("ALTOFLOW_RERANKER", "bm25")
    got = asyncio.run(twin.run(question=question))
    want = af.run(af.Pipeline.from_module(APP), question=question).to_dict()
    assert got["report"], "the question must give claims to verify"
    assert [r["claim"] for r in got["report"]] == [r["claim"] for r in want["report"]]
    assert [r["verdict"] for r in got["report"]] == [r["verdict"] for r in want["report"]]
    assert got == want


def test_twin_fans_out_with_send(twin):
    nodes = set(twin.GRAPH.get_graph(xray=True).nodes)
    assert {"answer", "claims", "verify:queries", "verify:search", "verify:judge"} <= nodes
