"""The generate-judge-filter app: every kept candidate passed, the best are sorted by grade and
at most BEST, and the same result served as in-process."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import altoflow as af
from altoflow.client import Client
from altoflow.server.served import ServedIngress
from altoflow.server import create_app, serve_in_thread

HERE = Path(__file__).resolve().parent
TARGET = str(HERE / "app.py")
EXAMPLE = json.loads((HERE / "input.json").read_text())


def _load_app():
    spec = importlib.util.spec_from_file_location("judgefilter_app_under_test", TARGET)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


app = _load_app()


@pytest.fixture(autouse=True)
def fast_simulated_lm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ALTOFLOW_LM", "ALTOFLOW_LM_URL", "ALTOFLOW_LM_MODEL", "ALTOFLOW_LM_SEED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALTOFLOW_LM_SPEED", "100")


def test_lines_lose_their_bullets_and_none_is_no_problem() -> None:
    assert [app.clean_line(s) for s in ("2. Water boils.", "- a", " * b ", "3) c", "plain")] == [
        "Water boils.", "a", "b", "c", "plain"]
    assert app.problems_in("NONE") == [] and app.problems_in("None.\n\n") == []
    assert app.problems_in("1. It is vague.\n\n2. It is wrong.") == ["It is vague.", "It is wrong."]
    assert [app.grade(["x"] * n) for n in (0, 1, 4, 5, 9)] == [10, 8, 2, 0, 0]


def _check(result: af.Result, fields: dict) -> None:
    min_score = fields.get("min_score", 6)
    judged = result["judgement"]
    assert judged, "the simulated LM writes at least one candidate"
    for j in judged:
        assert j["score"] == app.grade(j["problems"]) and j["passed"] == (j["score"] >= min_score)
        assert j["lm"] == "altoflow-simulated"
    kept, best = result["kept"], result["best"]
    assert all(j["passed"] for j in kept)
    # Every one that passed, in the order written.
    assert kept == [{k: j[k] for k in ("candidate", "score", "passed")} for j in judged if j["passed"]]
    assert len(best) <= app.BEST
    scores = [j["score"] for j in best]
    assert scores == sorted(scores, reverse=True)
    # The plain-Python oracle: a stable sort keeps equal grades in the order they were written.
    assert best == sorted(kept, key=lambda j: -j["score"])[: app.BEST]


def test_kept_candidates_passed_and_the_best_are_ranked() -> None:
    result = af.run(TARGET, **EXAMPLE)
    _check(result, EXAMPLE)
    assert 0 < len(result["kept"]) < len(result["judgement"])  # the filter had work to do


@pytest.mark.parametrize("min_score", [0, 10])
def test_a_filter_that_keeps_all_or_none(min_score) -> None:
    fields = {**EXAMPLE, "min_score": min_score}
    result = af.run(TARGET, **fields)
    _check(result, fields)
    if min_score == 0:
        assert len(result["kept"]) == len(result["judgement"])
    elif not any(j["score"] == 10 for j in result["judgement"]):
        assert result["kept"] == [] and result["best"] == []


@pytest.mark.timeout(240)
def test_served_result_equals_altoflow_run() -> None:
    requests = [EXAMPLE, {"question": "What does the global statement do?"},
                {**EXAMPLE, "min_score": 10}]
    with serve_in_thread(create_app(ServedIngress(TARGET))) as url, Client(url, timeout=120) as client:
        for fields in requests:
            got, want = client.run(**fields), af.run(TARGET, **fields)
            _check(got, fields)
            assert got.to_dict() == json.loads(json.dumps(want.to_dict())), fields
